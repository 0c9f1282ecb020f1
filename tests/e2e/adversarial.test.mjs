// The adversarial suite: one test per way a customer who read the README could get origin calls
// it is not charged for, or make the gateway price one route and the origin serve another. Each
// test states the attack, runs it against the deployable bundle in workerd with a real origin,
// and checks that the attacker gained nothing: what reached the origin, and what was counted.
import { test } from "node:test";
import assert from "node:assert/strict";
import { gatewayWithOrigin } from "../support/harness.mjs";
import { eventually, verifyOriginSignature } from "../support/client.mjs";

const ROUTES = [
  { method: "POST", path: "/v1/ai/**", meter: "ai_tokens", cost: "reported" },
  { method: "GET", path: "/v1/export/*/csv", meter: "csv_rows", cost: 10 },
];

// QUOTA_DEBUG_WORK: an answer the org's DO gave carries `X-Quota-Debug-Work`; one the isolate
// gave from memory does not.
const fx = gatewayWithOrigin({ ROUTES: JSON.stringify(ROUTES), RESERVED_HEADER_PREFIXES: "x-internal-, X-Tenant-", PLAN_REFRESH_SECS: "1", QUOTA_DEBUG_WORK: "1", USAGE_API_CALLS_PER_MINUTE: "0" }, async ({ api }) => {
  await api.plan("tiny", {
    limits: [
      { meter: "requests", limit: 5, period: "month" },
      { meter: "ai_tokens", limit: 100000, period: "month" },
      { meter: "csv_rows", limit: 1000, period: "month" },
    ],
  });
  await api.plan("roomy", { limits: [{ meter: "requests", limit: 1_000_000_000, period: "month" }] });
  // A rate window (attempts, by default) beside a quota period (successes).
  await api.plan("scan", {
    limits: [
      { meter: "requests", limit: 5, period: "minute" },
      { meter: "requests", limit: 100, period: "month" },
    ],
  });
});

/** What reached the origin since `from`, for one org. */
const seenFor = (org, from) => fx.origin.requests.slice(from).filter((r) => r.headers["x-quota-org"] === org);

test("one Idempotency-Key on 20 different paths: the first is counted, the 19 others are 422 and never reach the origin", async () => {
  const org = await fx.api.newOrg("tiny", { prefix: "idem-paths" });
  const from = fx.origin.requests.length;
  const statuses = [];
  for (let i = 0; i < 20; i++) {
    const r = await fx.api.call("GET", `/v1/things/${i}`, { key: org.key, headers: { "idempotency-key": "same-key" } });
    statuses.push(r.status);
    if (r.status === 422) assert.equal(r.json.type, "urn:quotagate:problem:idempotency-key-reused");
  }
  assert.equal(statuses[0], 200);
  assert.deepEqual(statuses.slice(1), Array(19).fill(422));
  assert.deepEqual(seenFor(org.id, from).map((r) => r.path), ["/v1/things/0"]);
  assert.equal(await fx.api.used(org.id, "requests-month"), 1);
});

test("a reported-cost route called 3 times with one Idempotency-Key: counted once, and the origin is told (signed) that calls 2 and 3 are replays", async () => {
  const org = await fx.api.newOrg("tiny", { prefix: "idem-reported" });
  const from = fx.origin.requests.length;
  const send = () =>
    fx.api.call("POST", "/v1/ai/chat?usage=ai_tokens:400", { key: org.key, body: { q: "hi" }, headers: { "idempotency-key": "chat-1" } });
  const answers = [];
  for (let i = 0; i < 3; i++) {
    // The first request's flight ends when the gateway has told the org how it went, just after
    // the client's answer: until then the same key is a 409, which a client retries.
    let r;
    assert.ok(await eventually(async () => (r = await send()).status !== 409, { timeout: 5000 }), "still in flight");
    answers.push(r);
  }
  assert.deepEqual(answers.map((r) => r.status), [200, 200, 200]);
  assert.deepEqual(answers.map((r) => r.headers.get("idempotent-replayed")), [null, "true", "true"]);
  const seen = seenFor(org.id, from);
  assert.deepEqual(seen.map((r) => r.headers["x-quota-replay"]), ["false", "true", "true"]);
  for (const s of seen) assert.ok(verifyOriginSignature(s), "the replay flag is signed");
  assert.ok(await eventually(async () => (await fx.api.used(org.id, "ai_tokens-month")) === 400));
  // A replay flag cannot be forged or stripped: it is part of what the signature covers.
  const forged = { ...seen[1], headers: { ...seen[1].headers, "x-quota-replay": "false" } };
  assert.ok(!verifyOriginSignature(forged));
});

test("a second request while the first with the same key is in flight is a 409 and never reaches the origin", async () => {
  const org = await fx.api.newOrg("tiny", { prefix: "idem-flight" });
  const from = fx.origin.requests.length;
  const opts = { key: org.key, headers: { "idempotency-key": "slow-1" } };
  const first = fx.api.call("GET", "/v1/slow?delay=800", opts);
  await new Promise((r) => setTimeout(r, 200));
  const second = await fx.api.call("GET", "/v1/slow?delay=800", opts);
  assert.equal(second.status, 409);
  assert.equal(second.json.type, "urn:quotagate:problem:idempotency-key-in-flight");
  assert.equal((await first).status, 200);
  assert.equal(seenFor(org.id, from).length, 1);
  assert.equal(await fx.api.used(org.id, "requests-month"), 1);
});

test("an event id cannot pre-empt a proxied request's Idempotency-Key: they are counted apart", async () => {
  const org = await fx.api.newOrg("tiny", { prefix: "idem-events" });
  const ev = await fx.api.call("POST", "/_quota/v1/events", { key: org.key, body: { events: [{ id: "k-1", meter: "requests", quantity: 1 }] } });
  assert.equal(ev.status, 200);
  const r = await fx.api.call("GET", "/v1/x", { key: org.key, headers: { "idempotency-key": "k-1" } });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get("idempotent-replayed"), null, "the event did not make the request a replay");
  assert.equal(await fx.api.used(org.id, "requests-month"), 2);
});

test("a percent-encoded path costs what the route it decodes to costs, and reaches the origin decoded", async () => {
  const org = await fx.api.newOrg("tiny", { prefix: "path" });
  const from = fx.origin.requests.length;
  for (const p of ["/v1/%65xport/x/csv", "/v1/EXPORT/x/CSV", "/v1/export;v=1/x/csv", "/v1/./a/../export/x/csv", "/v1//export/x/csv"]) {
    const r = await fx.api.call("GET", p, { key: org.key });
    assert.equal(r.status, 200, p);
  }
  assert.equal(await fx.api.used(org.id, "csv_rows-month"), 50);
  assert.equal(await fx.api.used(org.id, "requests-month"), 0);
  const seen = seenFor(org.id, from);
  assert.deepEqual(seen.map((r) => r.path), ["/v1/export/x/csv", "/v1/EXPORT/x/CSV", "/v1/export;v=1/x/csv", "/v1/export/x/csv", "/v1/export/x/csv"]);
  for (const s of seen) assert.ok(verifyOriginSignature(s), "the normalized path is what is signed");
});

test("a path the gateway cannot price one way for every origin is a 400, and nothing is forwarded or counted", async () => {
  const org = await fx.api.newOrg("tiny", { prefix: "path-bad" });
  const from = fx.origin.requests.length;
  for (const p of ["/v1/export%2Fx/csv", "/v1/export%5cx", "/v1/a%00", "/v1/a%zz", "/%5Fquota/admin/plans"]) {
    const r = await fx.api.call("GET", p, { key: org.key });
    assert.ok(r.status === 400 || r.status === 404, `${p}: ${r.status}`);
  }
  assert.equal(seenFor(org.id, from).length, 0);
  assert.equal(await fx.api.used(org.id, "requests-month"), 0);
});

test("a scan of 404s spends the rate window (attempts) but not the month (successes)", async () => {
  const org = await fx.api.newOrg("scan", { prefix: "scan" });
  const from = fx.origin.requests.length;
  const statuses = [];
  for (let i = 0; i < 10; i++) statuses.push((await fx.api.call("GET", `/missing/${i}?status=404`, { key: org.key })).status);
  assert.deepEqual(statuses, [404, 404, 404, 404, 404, 429, 429, 429, 429, 429]);
  assert.equal(seenFor(org.id, from).length, 5, "the rate window protected the origin");
  // The releases come after the answers: the month gives every failed request back.
  assert.ok(await eventually(async () => (await fx.api.used(org.id, "requests-month")) === 0));
  assert.equal(await fx.api.used(org.id, "requests-minute"), 5);
});

test("credentials, usage reports and reserved headers from the client never reach the origin", async () => {
  const org = await fx.api.newOrg("tiny", { prefix: "headers" });
  const from = fx.origin.requests.length;
  const r = await fx.api.call("GET", "/v1/h", {
    key: org.key,
    headers: {
      authorization: `Bearer ${org.key}`,
      "x-usage-ai-tokens": "0",
      "x-usage-requests": "0",
      "x-quota-replay": "true",
      "x-internal-user": "admin",
      "x-tenant-id": "other-org",
      "x-custom": "kept",
    },
  });
  assert.equal(r.status, 200);
  const [seen] = seenFor(org.id, from);
  const names = Object.keys(seen.headers);
  for (const n of names) {
    assert.ok(!/^(authorization|x-api-key|x-usage-|x-internal-|x-tenant-)/.test(n), `${n} reached the origin`);
  }
  assert.equal(seen.headers["x-custom"], "kept");
  assert.equal(seen.headers["x-quota-replay"], "false");
  assert.equal(seen.headers["x-quota-key-id"], org.keyId);
  assert.ok(verifyOriginSignature(seen));
});

test("the admin view of an idle org shows the plan it will decide under, not the one it last used", async () => {
  await fx.api.plan("moving", { limits: [{ meter: "requests", limit: 5, period: "month" }] });
  const org = await fx.api.newOrg("moving", { prefix: "view" });
  assert.equal((await fx.api.state(org.id)).limits.find((l) => l.policy === "requests-month").limit, 5);
  await fx.api.plan("moving", { limits: [{ meter: "requests", limit: 7, period: "month" }] });
  // The org is idle (no usage, so no alarm of its own): the view alone must adopt the new
  // version once its copy is older than PLAN_REFRESH_SECS (1 s here).
  await new Promise((r) => setTimeout(r, 1200));
  const limit = (await fx.api.state(org.id)).limits.find((l) => l.policy === "requests-month");
  assert.deepEqual([limit.limit, limit.used], [7, 0]);
  // And the org decides under it: the sixth and seventh requests are admitted.
  for (let i = 0; i < 7; i++) assert.equal((await fx.api.call("GET", `/v1/v/${i}`, { key: org.key })).status, 200, `request ${i}`);
  assert.equal((await fx.api.call("GET", "/v1/v/8", { key: org.key })).status, 429);
});

test("a client looping on 429s costs its org's DO one call per second, not one per request, and still gets the refusal's own answer", async () => {
  const org = await fx.api.newOrg("tiny", { prefix: "storm" });
  for (let i = 0; i < 5; i++) assert.equal((await fx.api.call("GET", `/v1/s/${i}`, { key: org.key })).status, 200);
  const from = fx.origin.requests.length;
  const first = await fx.api.call("GET", "/v1/storm", { key: org.key });
  assert.equal(first.status, 429);
  assert.ok(first.headers.get("x-quota-debug-work"), "the first refusal is the DO's");
  const t0 = Date.now();
  let refused = 0;
  let fromDo = 0;
  while (Date.now() - t0 < 2500) {
    const r = await fx.api.call("GET", "/v1/storm", { key: org.key });
    assert.equal(r.status, 429);
    // The same problem and fields as the DO's, with the countdowns moved on.
    assert.deepEqual(r.json, first.json);
    assert.equal(r.headers.get("ratelimit-policy"), first.headers.get("ratelimit-policy"));
    assert.equal(r.headers.get("x-quota-status"), "over");
    assert.ok(Number(r.headers.get("retry-after")) >= 1);
    refused++;
    if (r.headers.get("x-quota-debug-work")) fromDo++;
  }
  const secs = (Date.now() - t0) / 1000;
  assert.ok(refused >= 50, `only ${refused} requests in ${secs} s`);
  // One DO call per second of memory (REFUSAL_MEMORY_MS, 1 s by default), plus the edges.
  assert.ok(fromDo <= Math.ceil(secs) + 1, `${fromDo} of ${refused} refusals reached the DO in ${secs} s`);
  assert.equal(seenFor(org.id, from).length, 0, "nothing reached the origin");
  assert.equal(await fx.api.used(org.id, "requests-month"), 5, "nothing was counted as usage");
  // Another key of the org, or an Idempotency-Key, is asked of the DO: memos are per class.
  const other = await fx.api.key(org.id);
  const r2 = await fx.api.call("GET", "/v1/storm", { key: other.key });
  assert.ok(r2.status === 429 && r2.headers.get("x-quota-debug-work"));
  const keyed = await fx.api.call("GET", "/v1/storm", { key: org.key, headers: { "idempotency-key": "storm-1" } });
  assert.ok(keyed.status === 429 && keyed.headers.get("x-quota-debug-work"));
});

/** Runs `fn(i)` for i in [0, n) with at most `width` at a time; the results in order. */
async function pool(n, width, fn) {
  const out = new Array(n);
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < n) {
      const i = next++;
      out[i] = await fn(i);
    }
  }));
  return out;
}

test("10,000 random meter names and 10,100 reservations leave one org's DO within its stated bounds", async () => {
  const org = await fx.api.newOrg("roomy", { prefix: "bounded" });
  const name = () => `m${Math.random().toString(36).slice(2, 12)}`;
  // Client-chosen names: 100 batches of 100 events, and 200 checks, each on a meter nobody declared.
  const batches = await pool(100, 8, (b) =>
    fx.api.call("POST", "/_quota/v1/events", { key: org.key, body: { events: Array.from({ length: 100 }, (_, i) => ({ id: `e${b}-${i}`, meter: name(), quantity: 1 })) } }),
  );
  for (const r of batches) {
    assert.equal(r.status, 200, r.text);
    assert.ok(r.json.results.every((x) => x.status === "rejected" && /^unknown meter/.test(x.reason)), JSON.stringify(r.json.results[0]));
  }
  const checks = await pool(200, 8, () => fx.api.call("POST", "/_quota/v1/check", { key: org.key, body: { meter: name(), quantity: 1 } }));
  assert.ok(checks.every((r) => r.status === 400 && r.json.type === "urn:quotagate:problem:unknown-meter"));
  let s = await fx.api.state(org.id);
  // At most the one counter row of the plan's one meter (`requests`); no name a client chose
  // left a row, a decision series or an idempotency record.
  assert.ok(s.counter_rows <= 1, `counter rows ${s.counter_rows}`);
  assert.deepEqual({ series: s.decision_series, records: s.idempotency_records }, { series: 0, records: 0 });
  // Reservations: 10,000 may be open (MAX_OPEN_RESERVATIONS); the 100 past that are 429s.
  const reserve = () => fx.api.call("POST", "/_quota/v1/check", { key: org.key, body: { meter: "requests", quantity: 1, reserve: true, ttl_seconds: 3600 } });
  const answers = await pool(10_100, 16, reserve);
  const by = {};
  for (const r of answers) by[r.status] = (by[r.status] ?? 0) + 1;
  assert.deepEqual(by, { 200: 10_000, 429: 100 });
  const full = answers.find((r) => r.status === 429);
  assert.equal(full.json.type, "urn:quotagate:problem:too-many-reservations");
  assert.ok(Number(full.headers.get("retry-after")) > 3500);
  s = await fx.api.state(org.id);
  assert.equal(s.open_reservations, 10_000);
  assert.equal(s.limits.find((l) => l.policy === "requests-month").used, 10_000, "every open reservation holds its units; none was lost");
  // One settled makes room for exactly one more.
  const id = answers.find((r) => r.status === 200).json.reservation.id;
  assert.equal((await fx.api.call("POST", `/_quota/v1/reservations/${id}/release`, { key: org.key, body: {} })).status, 200);
  assert.equal((await reserve()).status, 200);
  assert.equal((await reserve()).status, 429);
});
