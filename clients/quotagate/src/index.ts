// quotagate's client: one set of types for its decisions, spoken either through a service
// binding (Workers RPC to the `QuotaService` entrypoint, no network hop; the binding is the
// credential, so the org is named) or over the HTTP API (from Node, Bun, Deno or a Worker of
// another account; the org key is the credential, so the org is the key's).
//
// Both answer exactly what the HTTP API answers: the status, the headers to send on (the IETF
// RateLimit fields, the X-RateLimit-* trio, X-Quota-Status, Retry-After) and the JSON body.

/** A period a limit counts over. */
export type Period = "second" | "minute" | "hour" | "day" | "month" | "billing" | "lifetime" | (string & {});

/** The level of a limit: under 80%, 80%, 95%, at or over 100%. */
export type Level = "ok" | "warning" | "critical" | "over";

/** One limit of the plan, as a decision or the usage view shows it. */
export interface LimitStatus {
  meter: string;
  /** The policy name the RateLimit fields use, e.g. `requests-month`. */
  policy: string;
  period: Period;
  mode: "hard" | "soft" | "unlimited";
  limit: number | null;
  used: number;
  remaining: number | null;
  percentage: number | null;
  level: Level;
  within_limit: boolean;
  window_start: string;
  reset_at: string | null;
  reset_in_seconds: number | null;
  overage: number;
  overage_cost_cents: number;
  /** A composite meter's usage by part. */
  breakdown?: Record<string, number>;
}

/** An RFC 9457 problem: a refusal (429, 402) or an error. */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  meter?: string;
  limit?: number | null;
  used?: number;
  requested?: number;
  reset?: string | null;
  plan?: string;
  "violated-policies"?: string[];
  upgrade_url?: string | null;
  [extension: string]: unknown;
}

/** `check` and `reserve`: the decision (always HTTP 200; `status` says 200, 429 or 402). */
export interface Decision {
  allowed: boolean;
  status: 200 | 402 | 429;
  meter: string;
  quantity: number;
  level: Level;
  retry_after: number | null;
  violated_policies: string[];
  limits: LimitStatus[];
  /** `reserve` when allowed: the reservation to commit or release. */
  reservation?: { id: string; quantity: number; expires_at: string };
  /** On a refusal: the problem a proxied request would have been answered with. */
  problem?: Problem;
}

export interface CheckRequest {
  meter: string;
  /** Units the request would spend (default 1). */
  quantity?: number;
  /** How long a reservation stays open before it is released (default 300, at most 86400). */
  ttl_seconds?: number;
}

export interface UsageEvent {
  /** Idempotent: the same id within 48 hours counts once. */
  id: string;
  meter: string;
  quantity: number;
  timestamp?: string;
  metadata?: Record<string, string | number | boolean | null>;
}

export interface EventsRequest {
  events: UsageEvent[];
  /** Refuse events that would pass a hard limit (default false: usage is recorded as it is). */
  enforce?: boolean;
}

export interface EventResult {
  id: string;
  status: "accepted" | "duplicate" | "rejected";
  reason?: string;
}

export interface Events {
  results: EventResult[];
}

export interface Settled {
  id: string;
  status: string;
  [field: string]: unknown;
}

export interface Usage {
  org_id: string;
  plan: string;
  period: { start: string; end: string };
  total_overage_cost_cents: number;
  alerts: unknown[];
  meters: LimitStatus[];
}

export interface UsageStatus {
  org_id: string;
  plan: string;
  status: "ok" | "approaching_limit" | "over_limit";
  level: Level;
  message: string;
}

/**
 * What every call answers: the HTTP API's status, its headers (names in lower case) and its body,
 * which is `T` on success and a `Problem` otherwise (bad input, an unknown org or meter, a
 * refusal of the usage API's own limit).
 */
export type Answer<T> =
  | { ok: true; status: number; headers: Record<string, string>; body: T }
  | { ok: false; status: number; headers: Record<string, string>; body: Problem };

/** quotagate for one org. */
export interface Quota {
  check(request: CheckRequest): Promise<Answer<Decision>>;
  reserve(request: CheckRequest): Promise<Answer<Decision>>;
  commit(reservation: string, request?: { quantity?: number }): Promise<Answer<Settled>>;
  release(reservation: string): Promise<Answer<Settled>>;
  record(request: EventsRequest): Promise<Answer<Events>>;
  usage(): Promise<Answer<Usage>>;
  status(): Promise<Answer<UsageStatus>>;
}

/** The `QuotaService` entrypoint as a service binding exposes it (Workers RPC). */
export interface QuotaService {
  check(org: string, request: CheckRequest): Promise<Answer<Decision>>;
  reserve(org: string, request: CheckRequest): Promise<Answer<Decision>>;
  commit(org: string, reservation: string, request?: { quantity?: number }): Promise<Answer<Settled>>;
  release(org: string, reservation: string): Promise<Answer<Settled>>;
  record(org: string, request: EventsRequest): Promise<Answer<Events>>;
  usage(org: string, request?: { short?: boolean }): Promise<Answer<Usage | UsageStatus>>;
}

/**
 * quotagate through a service binding, for `org`:
 * `services = [{ binding = "QUOTA", service = "quotagate", entrypoint = "QuotaService" }]`.
 */
export function fromBinding(binding: QuotaService, org: string): Quota {
  return {
    check: (r) => binding.check(org, r),
    reserve: (r) => binding.reserve(org, r),
    commit: (id, r) => binding.commit(org, id, r ?? {}),
    release: (id) => binding.release(org, id),
    record: (r) => binding.record(org, r),
    usage: () => binding.usage(org, { short: false }) as Promise<Answer<Usage>>,
    status: () => binding.usage(org, { short: true }) as Promise<Answer<UsageStatus>>,
  };
}

export interface HttpOptions {
  /** The gateway's origin, e.g. `https://api.example.com`. */
  baseUrl: string;
  /** The org's API key: it names the org. */
  key: string;
  /** A `fetch` of your choosing (default: the global one). */
  fetch?: typeof fetch;
}

/** quotagate over its HTTP API, for the org of `key`. */
export function fromHttp(options: HttpOptions): Quota {
  const base = options.baseUrl.replace(/\/+$/, "");
  const send = options.fetch ?? fetch;
  async function call<T>(method: string, path: string, body?: unknown): Promise<Answer<T>> {
    const init: RequestInit = { method, headers: { "x-api-key": options.key } };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers = { ...init.headers, "content-type": "application/json" };
    }
    const res = await send(`${base}/_quota${path}`, init);
    const headers: Record<string, string> = {};
    res.headers.forEach((value, name) => {
      if (name !== "content-type" && name !== "cache-control") headers[name] = value;
    });
    const text = await res.text();
    let parsed: unknown = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      // Not quotagate's JSON (a proxy in between answered): say so as a problem.
      parsed = { type: "about:blank", title: res.statusText, status: res.status, detail: text.slice(0, 200) };
    }
    return res.ok
      ? { ok: true, status: res.status, headers, body: parsed as T }
      : { ok: false, status: res.status, headers, body: parsed as Problem };
  }
  const rsv = (id: string) => `/v1/reservations/${encodeURIComponent(id)}`;
  return {
    check: (r) => call("POST", "/v1/check", r),
    reserve: (r) => call("POST", "/v1/check", { ...r, reserve: true }),
    commit: (id, r) => call("POST", `${rsv(id)}/commit`, r ?? {}),
    release: (id) => call("POST", `${rsv(id)}/release`, {}),
    record: (r) => call("POST", "/v1/events", r),
    usage: () => call("GET", "/v1/usage"),
    status: () => call("GET", "/v1/usage/status"),
  };
}

/** The headers of an answer a client should see (RateLimit fields, X-RateLimit-*, Retry-After). */
export const FORWARDED_HEADERS = [
  "ratelimit-policy",
  "ratelimit",
  "x-ratelimit-limit",
  "x-ratelimit-remaining",
  "x-ratelimit-reset",
  "x-quota-status",
  "retry-after",
] as const;
