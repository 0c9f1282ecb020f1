// Small HTTP helpers for the end-to-end tests: admin calls, org-key calls, JSON bodies.
import crypto from "node:crypto";

export const ADMIN_TOKEN = "test-admin-token";
export const KEY_SECRET = "test-key-secret";
export const ORIGIN_SECRET = "test-origin-secret";

// Org ids made by `newOrg`, numbered per test process (one process per test file).
let orgs = 0;

export function client(baseUrl) {
  async function call(method, path, { token, key, body, headers = {}, raw } = {}) {
    const h = { ...headers };
    if (token) h.authorization = `Bearer ${token}`;
    if (key) h["x-api-key"] = key;
    let payload = raw;
    if (body !== undefined) {
      h["content-type"] = "application/json";
      payload = JSON.stringify(body);
    }
    const r = await fetch(`${baseUrl}${path}`, { method, headers: h, body: payload });
    const text = await r.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {}
    return { status: r.status, headers: r.headers, text, json };
  }
  const admin = (method, path, body) => call(method, `/_quota/admin${path}`, { token: ADMIN_TOKEN, body });
  return {
    call,
    admin,
    async plan(id, doc) {
      const r = await admin("PUT", `/plans/${id}`, doc);
      if (r.status >= 300) throw new Error(`PUT plan ${id}: ${r.status} ${r.text}`);
      return r.json;
    },
    async org(id, doc) {
      const r = await admin("PUT", `/orgs/${id}`, doc);
      if (r.status >= 300) throw new Error(`PUT org ${id}: ${r.status} ${r.text}`);
      return r.json;
    },
    async key(org) {
      const r = await admin("POST", `/orgs/${org}/keys`);
      if (r.status !== 201) throw new Error(`POST key ${org}: ${r.status} ${r.text}`);
      return r.json;
    },
    /**
     * A fresh org on `plan` with one key: { id, key, keyId }. The id is `<prefix>-<n>` unless
     * `id` is given; `limits` first puts a plan of that id with those limits; other fields go
     * into the org's PUT body.
     */
    async newOrg(plan, { id, prefix = "org", limits, ...fields } = {}) {
      if (limits) await this.plan(plan, { limits });
      const orgId = id ?? `${prefix}-${++orgs}`;
      await this.org(orgId, { plan, ...fields });
      const k = await this.key(orgId);
      return { id: orgId, key: k.key, keyId: k.key_id };
    },
    async state(org) {
      const r = await admin("GET", `/orgs/${org}`);
      if (r.status !== 200) throw new Error(`GET org ${org}: ${r.status} ${r.text}`);
      return r.json.state;
    },
    async used(org, policy) {
      const s = await this.state(org);
      const l = s.limits.find((l) => l.policy === policy);
      if (!l) throw new Error(`no limit ${policy} in ${JSON.stringify(s.limits)}`);
      return l.used;
    },
  };
}

/**
 * Verifies the X-Quota-Signature an origin received, exactly as the README tells an origin to:
 * any `v2=` of the header (one per listed ORIGIN_SECRET during a rotation) under `secret`.
 */
export function verifyOriginSignature(seen, secret = ORIGIN_SECRET) {
  const h = seen.headers;
  const signing = [
    "v2",
    h["x-quota-timestamp"],
    h["x-quota-org"],
    h["x-quota-plan"],
    h["x-quota-key-id"],
    h["x-quota-decision-id"],
    h["x-quota-replay"] === "true" ? "replay" : "first",
    seen.method,
    `${seen.path}${seen.query}`,
  ].join("\n");
  const want = Buffer.from(crypto.createHmac("sha256", secret).update(signing).digest("hex"));
  return (h["x-quota-signature"] ?? "").split(",").some((part) => {
    const [scheme, mac = ""] = part.trim().split("=");
    return scheme === "v2" && mac.length === want.length && crypto.timingSafeEqual(Buffer.from(mac), want);
  });
}

/** Polls `fn` until it returns a truthy value (settlement runs after the response). */
export async function eventually(fn, { timeout = 5000, every = 50 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) return last;
    await new Promise((r) => setTimeout(r, every));
  }
}
