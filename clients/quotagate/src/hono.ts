// A Hono middleware that asks quotagate before the handler runs, the way the gateway's proxy
// does for an origin: the request's units are reserved first (a refusal is answered at once with
// quotagate's own 429 or 402 problem and headers), the handler runs, and then the reservation is
// committed (a response under 400) or released (any other). Every response carries the IETF
// RateLimit fields and the X-RateLimit-* trio of the decision.
//
// A handler that knows its cost only afterwards (tokens generated, rows scanned) reports it with
// `c.set("quotaUsage", n)` or an `X-Usage-<Meter>` response header (which is not sent on); the
// up-front `cost` is then only what is reserved while it runs.
import type { Context, Env, MiddlewareHandler } from "hono";
import { FORWARDED_HEADERS, type Answer, type Decision, type Problem, type Quota } from "./index.ts";

/** What the middleware puts in the context: the decision, and the cost a handler reports. */
export type QuotaVariables = {
  quota: Decision;
  quotaUsage: number;
};

export interface QuotaOptions<E extends Env> {
  /** The quota client of this request's org, e.g. `(c) => fromBinding(c.env.QUOTA, orgOf(c))`. */
  client: (c: Context<E>) => Quota | Promise<Quota>;
  /** The meter a request spends. */
  meter: string;
  /** Units a request spends (default 1), or a function of the request. */
  cost?: number | ((c: Context<E>) => number);
  /** The handler reports the cost; `cost` is reserved while it runs. */
  reported?: boolean;
  /** How long the reservation may stay open (seconds, default quotagate's 300). */
  ttlSeconds?: number;
}

/** Copies the decision's headers a client should see onto `target`. */
function forward(target: Headers, headers: Record<string, string>): void {
  for (const name of FORWARDED_HEADERS) {
    const value = headers[name];
    if (value !== undefined) target.set(name, value);
  }
}

function refuse(status: number, problem: Problem, headers: Record<string, string>): Response {
  const res = new Response(JSON.stringify(problem), {
    status,
    headers: { "content-type": "application/problem+json", "cache-control": "no-store" },
  });
  forward(res.headers, headers);
  return res;
}

/** The usage a handler reported: `c.get("quotaUsage")`, else its `X-Usage-<Meter>` header. */
function reportedUsage(c: Context, meter: string): number | undefined {
  const set = (c.get as (key: string) => unknown)("quotaUsage");
  if (typeof set === "number") return set;
  const name = `x-usage-${meter.replace(/_/g, "-")}`;
  const header = c.res.headers.get(name);
  if (header === null) return undefined;
  c.res.headers.delete(name);
  const n = Number(header);
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}

/** The middleware. */
export function quota<E extends Env>(options: QuotaOptions<E>): MiddlewareHandler<E> {
  return async (c, next) => {
    const q = await options.client(c);
    const quantity = typeof options.cost === "function" ? options.cost(c) : options.cost ?? 1;
    const request = { meter: options.meter, quantity, ...(options.ttlSeconds ? { ttl_seconds: options.ttlSeconds } : {}) };
    const answer: Answer<Decision> = await q.reserve(request);
    if (!answer.ok) return refuse(answer.status, answer.body, answer.headers);
    const decision = answer.body;
    if (!decision.allowed || !decision.reservation) {
      const problem = decision.problem ?? {
        type: "urn:quotagate:problem:quota-exceeded",
        title: "Quota exceeded",
        status: decision.status,
        detail: `Quota exceeded for ${decision.meter}`,
      };
      return refuse(decision.status, problem, answer.headers);
    }
    (c.set as (key: string, value: unknown) => void)("quota", decision);
    const id = decision.reservation.id;
    let failed = true;
    try {
      await next();
      failed = c.res.status >= 400 || c.error !== undefined;
    } finally {
      const used = options.reported ? reportedUsage(c, options.meter) : undefined;
      const settle = failed ? q.release(id) : q.commit(id, used === undefined ? {} : { quantity: used });
      // The client does not wait for the settlement, as it does not for the proxy's.
      let waited = false;
      try {
        c.executionCtx.waitUntil(settle);
        waited = true;
      } catch {
        // No execution context (a test or Node): settle before answering.
      }
      if (!waited) await settle;
    }
    forward(c.res.headers, answer.headers);
  };
}
