// The edge gateway end to end: the built worker under workerd, real DO SQLite and D1, a real
// HTTP origin. Each test uses its own org so their counters never mix.
import { test } from "node:test";
import assert from "node:assert/strict";
import { gatewayWithOrigin } from "../support/harness.mjs";
import { eventually, verifyOriginSignature } from "../support/client.mjs";

const ROUTES = JSON.stringify([
  { method: "POST", path: "/v1/ai/**", meter: "ai_tokens", cost: "reported" },
  { method: "POST", path: "/v1/profiles", meter: "mapping_profiles" },
]);

const FREE = {
  name: "Free",
  on_failure: "closed",
  upgrade_url: "https://example.test/upgrade",
  limits: [
    { meter: "requests", limit: 10, period: "minute", mode: "hard" },
    { meter: "requests", limit: 1000, period: "month", mode: "hard" },
    { meter: "ai_tokens", limit: 100, period: "month", mode: "soft", overage_price: { per_units: 10, cents: 3 } },
    { meter: "mapping_profiles", limit: 3, period: "lifetime", mode: "hard" },
  ],
};

const fx = gatewayWithOrigin({ ROUTES, PLAN_REFRESH_SECS: "1" }, async ({ api }) => {
  await api.plan("free", FREE);
});
/** A fresh org on the free plan with one key. */
const newOrg = (plan = "free") => fx.api.newOrg(plan);

function monthBounds(now = new Date()) {
  const start = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1);
  const end = Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1);
  return { start, end };
}

test("allowed requests carry exact RateLimit headers, then 429 at the burst limit", async () => {
  const o = await newOrg();
  const { start, end } = monthBounds();
  const monthW = (end - start) / 1000;
  const before = fx.origin.requests.length;
  const t0 = Date.now();
  const first = await fx.api.call("GET", "/hello?x=1", { key: o.key });
  assert.equal(first.status, 200);
  assert.equal(first.json.origin, "demo");
  assert.equal(first.headers.get("ratelimit-policy"), `"requests-minute";q=10;w=60, "requests-month";q=1000;w=${monthW}`);
  const rl = first.headers.get("ratelimit");
  const m = rl.match(/^"requests-minute";r=9;t=6, "requests-month";r=999;t=(\d+)$/);
  assert.ok(m, rl);
  assert.ok(Math.abs(Number(m[1]) - Math.ceil((end - t0) / 1000)) <= 2, `month t=${m[1]}`);
  assert.equal(first.headers.get("x-ratelimit-limit"), "10");
  assert.equal(first.headers.get("x-ratelimit-remaining"), "9");
  assert.ok(Math.abs(Number(first.headers.get("x-ratelimit-reset")) - Math.ceil((t0 + 6000) / 1000)) <= 2);
  assert.equal(first.headers.get("x-quota-status"), "ok");
  for (let i = 2; i <= 10; i++) {
    const r = await fx.api.call("GET", "/hello", { key: o.key });
    assert.equal(r.status, 200, `request ${i}`);
    assert.equal(r.headers.get("x-ratelimit-remaining"), String(10 - i));
  }
  const refused = await fx.api.call("GET", "/hello", { key: o.key });
  assert.equal(refused.status, 429);
  assert.equal(refused.headers.get("content-type"), "application/problem+json");
  assert.ok(["5", "6"].includes(refused.headers.get("retry-after")), refused.headers.get("retry-after"));
  assert.equal(refused.headers.get("x-ratelimit-remaining"), "0");
  assert.equal(refused.headers.get("x-quota-status"), "over");
  assert.match(refused.headers.get("ratelimit"), /^"requests-minute";r=0;t=\d+, "requests-month";r=990;t=\d+$/);
  const p = refused.json;
  assert.equal(p.status, 429);
  assert.equal(p.detail, "Quota exceeded for requests");
  assert.deepEqual([p.meter, p.limit, p.used, p.plan], ["requests", 10, 10, "free"]);
  assert.deepEqual(p["violated-policies"], ["requests-minute"]);
  assert.ok(!Number.isNaN(Date.parse(p.reset)));
  assert.equal(p.upgrade_url, undefined);
  // Exactly the ten admitted requests reached the fx.origin.
  assert.equal(fx.origin.requests.length - before, 10);
  assert.equal(await fx.api.used(o.id, "requests-month"), 10);
});

test("a lifetime limit refuses with 402 and the upgrade URL", async () => {
  const o = await newOrg();
  for (let i = 0; i < 3; i++) assert.equal((await fx.api.call("POST", "/v1/profiles", { key: o.key, body: {} })).status, 200);
  const r = await fx.api.call("POST", "/v1/profiles", { key: o.key, body: {} });
  assert.equal(r.status, 402);
  assert.equal(r.headers.get("retry-after"), null);
  assert.deepEqual([r.json.meter, r.json.limit, r.json.used, r.json.upgrade_url, r.json.reset],
    ["mapping_profiles", 3, 3, "https://example.test/upgrade", null]);
  assert.deepEqual(r.json["violated-policies"], ["mapping_profiles-lifetime"]);
});

test("post-response metering commits X-Usage headers, strips them, and soft limits price the overage", async () => {
  const o = await newOrg();
  const r1 = await fx.api.call("POST", "/v1/ai/chat?usage=ai_tokens:80", { key: o.key, body: { prompt: "hi" } });
  assert.equal(r1.status, 200);
  assert.equal(r1.headers.get("x-usage-ai-tokens"), null, "X-Usage headers never reach the client");
  assert.equal(r1.json.body, JSON.stringify({ prompt: "hi" }), "the body reached the origin");
  assert.equal(await eventually(async () => (await fx.api.used(o.id, "ai_tokens-month")) === 80), true);
  // Something remains (20 of 100), so the next one is admitted and overshoots by its own cost.
  const r2 = await fx.api.call("POST", "/v1/ai/chat?usage=ai_tokens:70", { key: o.key });
  assert.equal(r2.status, 200);
  await eventually(async () => (await fx.api.used(o.id, "ai_tokens-month")) === 150);
  const l = (await fx.api.state(o.id)).limits.find((l) => l.policy === "ai_tokens-month");
  assert.deepEqual([l.used, l.mode, l.overage, l.overage_cost_cents, l.level], [150, "soft", 50, 15, "over"]);
  // A soft limit never refuses.
  assert.equal((await fx.api.call("POST", "/v1/ai/chat?usage=ai_tokens:5", { key: o.key })).status, 200);
});

test("an origin error or an unreachable origin releases the reservation", async () => {
  const o = await newOrg();
  assert.equal((await fx.api.call("GET", "/ok", { key: o.key })).status, 200);
  const r = await fx.api.call("GET", "/boom?status=503", { key: o.key });
  assert.equal(r.status, 503);
  assert.equal(r.json.origin, "demo", "the origin's own answer is passed on");
  assert.equal(await eventually(async () => (await fx.api.used(o.id, "requests-month")) === 1), true);
  // A replayed Idempotency-Key that meets an origin error must not release the original. (The
  // origin's answer is steered by a header, which the key's fingerprint does not cover.)
  const idem = { key: o.key, headers: { "idempotency-key": "idem-1" } };
  assert.equal((await fx.api.call("GET", "/ok", idem)).status, 200);
  let replay;
  await eventually(async () => {
    replay = await fx.api.call("GET", "/ok", { ...idem, headers: { ...idem.headers, "x-origin-status": "500" } });
    return replay.status !== 409; // the first request's flight ends just after its answer
  });
  assert.deepEqual([replay.status, replay.headers.get("idempotent-replayed")], [500, "true"]);
  await new Promise((res) => setTimeout(res, 500)); // any release would have run by now
  assert.equal(await fx.api.used(o.id, "requests-month"), 2, "the original stays counted");
});

test("client X-Quota-* headers are stripped and the origin gets signed tenant headers", async () => {
  const o = await newOrg();
  const before = fx.origin.requests.length;
  const r = await fx.api.call("GET", "/whoami?a=b", {
    key: o.key,
    headers: { "x-quota-org": "org-evil", "x-quota-plan": "enterprise", "x-quota-signature": "v1=forged", "x-custom": "kept" },
  });
  assert.equal(r.status, 200);
  const seen = fx.origin.requests.slice(before).find((q) => q.path === "/whoami");
  assert.equal(seen.headers["x-quota-org"], o.id);
  assert.equal(seen.headers["x-quota-plan"], "free");
  assert.equal(seen.headers["x-custom"], "kept");
  assert.equal(seen.headers["x-api-key"], undefined, "the quota key stays at the edge");
  assert.ok(verifyOriginSignature(seen), "the origin can verify the signature");
  assert.ok(!verifyOriginSignature(seen, "wrong-secret"));
});

test("missing, forged, unknown and revoked keys all get the same 401; revocation is immediate", async () => {
  const o = await newOrg();
  assert.equal((await fx.api.call("GET", "/x", { key: o.key })).status, 200);
  const revoked = await fx.api.admin("DELETE", `/orgs/${o.id}/keys/${o.keyId}`);
  assert.equal(revoked.status, 200);
  assert.ok(revoked.json.revoked_at);
  const forged = o.key.slice(0, -1) + (o.key.endsWith("0") ? "1" : "0");
  const bodies = [];
  for (const key of [undefined, "nonsense", forged, o.key]) {
    const r = await fx.api.call("GET", "/x", { key });
    assert.equal(r.status, 401, `key ${key}`);
    assert.equal(r.headers.get("www-authenticate"), "Bearer");
    bodies.push(r.text);
  }
  assert.equal(new Set(bodies).size, 1, "all 401s look the same");
  // A key of an org that was never configured also looks the same.
  const other = await fx.api.call("GET", "/x", { headers: { authorization: `Bearer ${o.key.replace(o.id, "org-none")}` } });
  assert.equal(other.text, bodies[0]);
  assert.equal((await fx.api.admin("DELETE", `/orgs/${o.id}/keys/key_0000000000000000`)).status, 404);
});

test("one org's key can never read or spend another org's quota", async () => {
  const a = await newOrg();
  const b = await newOrg();
  // b reserves; a tries to settle b's reservation.
  const res = await fx.api.call("POST", "/_quota/v1/check", { key: b.key, body: { meter: "requests", quantity: 5, reserve: true } });
  assert.equal(res.status, 200);
  const id = res.json.reservation.id;
  const steal = await fx.api.call("POST", `/_quota/v1/reservations/${id}/commit`, { key: a.key, body: {} });
  assert.equal(steal.status, 404);
  // a's traffic never moves b's counters.
  for (let i = 0; i < 3; i++) await fx.api.call("GET", "/x", { key: a.key });
  assert.equal(await fx.api.used(a.id, "requests-month"), 3);
  assert.equal(await fx.api.used(b.id, "requests-month"), 5);
  // An org-key cannot use the admin API.
  assert.equal((await fx.api.call("GET", `/_quota/admin/orgs/${b.id}`, { headers: { authorization: `Bearer ${a.key}` } })).status, 401);
});

test("/v1/check decides without proxying; reservations commit and release exactly once", async () => {
  const o = await newOrg();
  const before = fx.origin.requests.length;
  const c = await fx.api.call("POST", "/_quota/v1/check", { key: o.key, body: { meter: "requests", quantity: 4 } });
  assert.equal(c.status, 200);
  assert.deepEqual([c.json.allowed, c.json.status, c.json.meter, c.json.quantity], [true, 200, "requests", 4]);
  assert.equal(await fx.api.used(o.id, "requests-month"), 0, "a check counts nothing");
  const big = await fx.api.call("POST", "/_quota/v1/check", { key: o.key, body: { meter: "requests", quantity: 11 } });
  assert.deepEqual([big.json.allowed, big.json.status], [false, 402]);
  const r = await fx.api.call("POST", "/_quota/v1/check", { key: o.key, body: { meter: "requests", quantity: 6, reserve: true, ttl_seconds: 60 } });
  assert.equal(r.json.allowed, true);
  assert.equal(await fx.api.used(o.id, "requests-month"), 6, "a reservation holds its units");
  const commit = await fx.api.call("POST", `/_quota/v1/reservations/${r.json.reservation.id}/commit`, { key: o.key, body: { quantity: 2 } });
  assert.deepEqual([commit.status, commit.json.outcome, commit.json.quantity], [200, "committed", 2]);
  assert.equal(await fx.api.used(o.id, "requests-month"), 2);
  const again = await fx.api.call("POST", `/_quota/v1/reservations/${r.json.reservation.id}/release`, { key: o.key });
  assert.equal(again.status, 404);
  const r2 = await fx.api.call("POST", "/_quota/v1/check", { key: o.key, body: { meter: "requests", quantity: 3, reserve: true } });
  const rel = await fx.api.call("POST", `/_quota/v1/reservations/${r2.json.reservation.id}/release`, { key: o.key });
  assert.deepEqual([rel.status, rel.json.outcome], [200, "released"]);
  assert.equal(await fx.api.used(o.id, "requests-month"), 2);
  assert.equal(fx.origin.requests.length, before, "nothing was proxied");
});

test("admin: plans and orgs validate with field-named 400s; unknown resources are 404", async () => {
  const bad = [
    [{ limits: [], colour: "red" }, "colour: unknown field (expected one of: id, name, on_failure, upgrade_url, meters, limits, lease)"],
    [{ limits: [{ meter: "requests", limit: -5, period: "day" }] }, "limits[0].limit: must not be negative (got -5); use null for unlimited"],
    [{ limits: [{ meter: "requests", limit: 5, period: "fortnight" }] }, "limits[0].period: unknown period 'fortnight' (expected one of: second, minute, hour, day, month, lifetime)"],
    [{ limits: [{ meter: "requests", limit: 5, period: "day" }, { meter: "requests", limit: 6, period: "day" }] }, "limits[1]: duplicate limit for meter 'requests' and period 'day' (first at limits[0])"],
  ];
  for (const [doc, detail] of bad) {
    const r = await fx.api.admin("PUT", "/plans/broken", doc);
    assert.equal(r.status, 400, JSON.stringify(doc));
    assert.equal(r.json.detail, detail);
  }
  assert.equal((await fx.api.admin("GET", "/plans/broken")).status, 404);
  const created = await fx.api.admin("PUT", "/plans/tiny", { limits: [{ meter: "requests", limit: 2, period: "day" }] });
  assert.equal(created.status, 201);
  assert.equal((await fx.api.admin("PUT", "/plans/tiny", { limits: [{ meter: "requests", limit: 2, period: "day" }] })).status, 200);
  assert.equal((await fx.api.admin("GET", "/plans")).json.plans.some((p) => p.id === "tiny"), true);
  const orgBad = [
    [{ plan: "nope" }, "plan: unknown plan 'nope'"],
    [{ plan: "tiny", billing_anchor: "2026-02-30" }, "billing_anchor: '2026-02-30' is not a valid date in the form YYYY-MM-DD"],
    [{ plan: "tiny", overrides: [{ meter: "requests", limit: 1.5, period: "day" }] }, "overrides[0].limit: must be a whole number (got 1.5); use null for unlimited"],
    [{ name: "x" }, "plan: is required"],
  ];
  for (const [doc, detail] of orgBad) {
    const r = await fx.api.admin("PUT", "/orgs/org-bad", doc);
    assert.equal(r.status, 400, JSON.stringify(doc));
    assert.equal(r.json.detail, detail);
  }
  assert.equal((await fx.api.admin("GET", "/orgs/org-bad")).status, 404);
  assert.equal((await fx.api.admin("GET", "/orgs/Bad_Org")).status, 400);
  assert.equal((await fx.api.admin("POST", "/orgs/org-bad/keys")).status, 404);
  assert.equal((await fx.api.admin("PATCH", "/plans/tiny")).status, 405);
  assert.equal((await fx.api.call("GET", "/_quota/admin/plans")).status, 401);
  assert.equal((await fx.api.call("GET", "/_quota/admin/plans", { token: "wrong" })).status, 401);
});

test("admin: overrides and plan updates reach the org's DO without a fan-out; reset zeroes a meter", async () => {
  await fx.api.plan("two", { limits: [{ meter: "requests", limit: 2, period: "day" }] });
  await fx.api.org("org-ov", { plan: "two", overrides: [{ meter: "requests", limit: 3, period: "day" }] });
  const { key } = await fx.api.key("org-ov");
  const codes = [];
  for (let i = 0; i < 4; i++) codes.push((await fx.api.call("GET", "/x", { key })).status);
  assert.deepEqual(codes, [200, 200, 200, 429]);
  // A plan change is written to D1 only; the org's DO adopts the new version by itself on its
  // first request once its copy is PLAN_REFRESH_SECS (1 s here) old.
  const up = await fx.api.admin("PUT", "/plans/two", { limits: [{ meter: "requests", limit: 2, period: "day" }, { meter: "requests", limit: 100, period: "month" }] });
  assert.deepEqual([up.json.orgs, up.json.version, up.json.adopted_within_secs], [1, 2, 1]);
  assert.equal((await fx.api.state("org-ov")).plan_version, 1, "nothing was pushed");
  await new Promise((r) => setTimeout(r, 1_100));
  assert.equal((await fx.api.call("GET", "/x", { key })).status, 429, "decided on the new plan, still over today's limit");
  const state = await fx.api.state("org-ov");
  assert.deepEqual([state.limits.length, state.plan_version], [2, 2]);
  const reset = await fx.api.admin("POST", "/orgs/org-ov/reset", { meter: "requests" });
  assert.equal(reset.status, 200);
  assert.equal(reset.json.limits.every((l) => l.used === 0), true);
  // The gateway may answer the refusal from memory for REFUSAL_MEMORY_MS (1 s by default): the
  // reset reaches the client within that.
  const t0 = Date.now();
  assert.ok(await eventually(async () => (await fx.api.call("GET", "/x", { key })).status === 200, { timeout: 3000 }));
  assert.ok(Date.now() - t0 <= 2000, `the reset reached the client after ${Date.now() - t0} ms`);
});

test("bad input gets a precise 4xx and changes no counter", async () => {
  const o = await newOrg();
  await fx.api.call("GET", "/x", { key: o.key });
  const cases = [
    [{ raw: "{\"meter\": ", headers: { "content-type": "application/json" } }, 400, /^request body is not valid JSON/],
    [{ body: { meter: "requests", quantity: -1 } }, 400, /^quantity: must not be negative \(got -1\)$/],
    [{ body: { meter: "requests", quantity: 1.5 } }, 400, /^quantity: must be a whole number \(got 1.5\)$/],
    [{ body: { meter: "requests", quantity: "ten" } }, 400, /^quantity: must be a whole number, got a string$/],
    [{ body: { meter: "requests", quantity: 2 ** 60 } }, 400, /^quantity: must be at most 9007199254740991/],
    [{ body: { meter: "nope", quantity: 1 } }, 400, /^unknown meter 'nope'$/],
    [{ body: { quantity: 1 } }, 400, /^meter: is required$/],
    [{ raw: JSON.stringify({ meter: "requests", pad: "x".repeat(70_000) }), headers: { "content-type": "application/json" } }, 413, /larger than 65536 bytes/],
  ];
  for (const [opts, status, detail] of cases) {
    const r = await fx.api.call("POST", "/_quota/v1/check", { key: o.key, ...opts });
    assert.equal(r.status, status, r.text);
    assert.equal(r.headers.get("content-type"), "application/problem+json");
    assert.match(r.json.detail, detail);
  }
  const badIdem = await fx.api.call("GET", "/x", { key: o.key, headers: { "idempotency-key": "has spaces" } });
  assert.equal(badIdem.status, 400);
  assert.match(badIdem.json.detail, /^Idempotency-Key header: /);
  assert.equal((await fx.api.call("POST", "/_quota/v1/reservations/not%20an%20id/commit", { key: o.key, body: {} })).status, 400);
  assert.equal((await fx.api.call("GET", "/_quota/v1/check", { key: o.key })).status, 405);
  assert.equal(await fx.api.used(o.id, "requests-month"), 1, "no bad request counted anything");
});
