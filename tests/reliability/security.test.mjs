// Security checks across every endpoint: wrong, revoked, unknown-org and missing keys get one
// identical 401 on every org-key endpoint; another org's reservation looks exactly like one that
// does not exist; spoofed tenant headers never reach the origin; every admin endpoint refuses
// without the token, and a refused admin request changes nothing.
import { test } from "node:test";
import assert from "node:assert/strict";
import { gatewayWithOrigin } from "../support/harness.mjs";
import { ledgerQuery } from "../support/gateway.mjs";
import { verifyOriginSignature, ADMIN_TOKEN } from "../support/client.mjs";
import { record } from "../support/report.mjs";

const fx = gatewayWithOrigin({}, async ({ api }) => {
  await api.plan("sec", {
    limits: [
      { meter: "requests", limit: 1000, period: "month" },
      { meter: "rows", limit: 1000, period: "month" },
      { meter: "ai_tokens", limit: 1000, period: "month" },
    ],
  });
});

/** Each limit's use: what a refused request must not move. */
async function used(org) {
  return (await fx.api.state(org)).limits.map((l) => [l.policy, l.used]);
}

/** What a client can observe of a response, less the Date header. */
async function observe(r) {
  const headers = [...r.headers.entries()].filter(([k]) => k !== "date").sort();
  return JSON.stringify({ status: r.status, headers, body: await r.text() });
}

const ORG_KEY_ENDPOINTS = [
  ["GET", "/v1/things", undefined],
  ["POST", "/v1/ai/chat", "{}"],
  ["POST", "/_quota/v1/check", '{"meter":"requests","quantity":1}'],
  ["POST", "/_quota/v1/events", '{"events":[{"id":"s1","meter":"rows","quantity":1}]}'],
  ["GET", "/_quota/v1/usage", undefined],
  ["GET", "/_quota/v1/usage/status", undefined],
  ["GET", "/_quota/v1/usage/summary?days=7", undefined],
  ["GET", "/_quota/v1/usage/history?meter=rows&from=2026-11-01&to=2026-11-02", undefined],
  ["POST", "/_quota/v1/reservations/r-any/commit", "{}"],
  ["POST", "/_quota/v1/reservations/r-any/release", "{}"],
];

test("wrong, revoked, unknown-org and missing keys: one identical 401 on every org-key endpoint", async () => {
  await fx.api.org("sec-a", { plan: "sec" });
  const live = await fx.api.key("sec-a");
  const gone = await fx.api.key("sec-a");
  assert.equal((await fx.api.admin("DELETE", `/orgs/sec-a/keys/${gone.key_id}`)).status, 200);
  const flip = (k) => k.slice(0, -1) + (k.endsWith("0") ? "1" : "0");
  const credentials = {
    "no key": {},
    "garbage key": { "x-api-key": "hello" },
    "wrong tag": { "x-api-key": flip(live.key) },
    "revoked key": { "x-api-key": gone.key },
    "unknown org's key (tag forged)": { "x-api-key": live.key.replace("sec-a", "sec-zz") },
    "as a Bearer token, revoked": { authorization: `Bearer ${gone.key}` },
    "admin token as org key": { authorization: `Bearer ${ADMIN_TOKEN}` },
  };
  const seenBefore = fx.origin.requests.length;
  const usedBefore = await used("sec-a");
  let compared = 0;
  for (const [method, path, body] of ORG_KEY_ENDPOINTS) {
    const answers = new Map();
    for (const [name, headers] of Object.entries(credentials)) {
      const r = await fetch(`${fx.gw.url}${path}`, { method, headers: { ...headers, "content-type": "application/json" }, body });
      assert.equal(r.status, 401, `${method} ${path} with ${name}`);
      answers.set(name, await observe(r));
      compared++;
    }
    assert.equal(new Set(answers.values()).size, 1, `${method} ${path}: the 401s differ: ${JSON.stringify([...answers])}`);
  }
  // The live key still works, so the refusals above were about the credentials alone.
  assert.equal((await fx.api.call("GET", "/_quota/v1/usage", { key: live.key })).status, 200);
  assert.equal(fx.origin.requests.length, seenBefore, "no refused request reached the origin");
  assert.deepEqual(await used("sec-a"), usedBefore, "no refused request counted anything");
  record("Security: keys", `${Object.keys(credentials).length} bad credentials × ${ORG_KEY_ENDPOINTS.length} org-key endpoints (${compared} requests)`, "every one 401, byte-identical per endpoint (Date aside); 0 reached the origin; 0 counted");
});

test("another org's reservation looks exactly like one that does not exist, and stays intact", async () => {
  await fx.api.org("sec-b", { plan: "sec" });
  await fx.api.org("sec-c", { plan: "sec" });
  const b = await fx.api.key("sec-b");
  const c = await fx.api.key("sec-c");
  const res = await fx.api.call("POST", "/_quota/v1/check", { key: c.key, body: { meter: "requests", quantity: 3, reserve: true } });
  const theirs = res.json.reservation.id;
  const madeUp = theirs.replace(/.$/, (x) => (x === "a" ? "b" : "a"));
  const shape = async (id, action) => (await observe(await fetch(`${fx.gw.url}/_quota/v1/reservations/${id}/${action}`, {
    method: "POST",
    headers: { "x-api-key": b.key, "content-type": "application/json" },
    body: "{}",
  }))).replaceAll(id, "<id>");
  for (const action of ["commit", "release"]) {
    const foreign = await shape(theirs, action);
    assert.match(foreign, /"status":404/);
    assert.equal(foreign, await shape(madeUp, action), `${action}: a foreign reservation is told apart from a missing one`);
  }
  // Neither attempt touched it: its owner still commits it, once.
  const commit = await fx.api.call("POST", `/_quota/v1/reservations/${theirs}/commit`, { key: c.key, body: {} });
  assert.equal(commit.status, 200, commit.text);
  assert.equal(await fx.api.used("sec-c", "requests-month"), 3);
  assert.equal(await fx.api.used("sec-b", "requests-month"), 0);
  // Each key sees only its own org.
  assert.equal((await fx.api.call("GET", "/_quota/v1/usage", { key: b.key })).json.org_id, "sec-b");
  record("Security: other orgs", "org B's key on org C's reservation (commit, release) against a made-up id", "identical 404s; C's reservation intact and committed once by C; B's counters unmoved; each key sees only its own org");
});

test("spoofed tenant headers never reach the origin", async () => {
  await fx.api.org("sec-d", { plan: "sec" });
  const d = await fx.api.key("sec-d");
  const spoof = {
    "x-quota-org": "sec-victim",
    "x-quota-plan": "enterprise",
    "x-quota-timestamp": "1",
    "x-quota-signature": "v1=00",
    "x-quota-decision": "fail-open",
    "X-Quota-Extra": "1",
  };
  const before = fx.origin.requests.length;
  for (const [path, method] of [["/v1/things", "GET"], ["/v1/ai/chat", "POST"]]) {
    const r = await fetch(`${fx.gw.url}${path}`, { method, headers: { ...spoof, "x-api-key": d.key }, body: method === "POST" ? "{}" : undefined });
    assert.equal(r.status, 200, `${method} ${path}: ${await r.clone().text()}`);
    await r.arrayBuffer();
  }
  const r = await fetch(`${fx.gw.url}/v1/things`, { headers: spoof });
  assert.equal(r.status, 401, "spoofed headers without a key are refused");
  await r.arrayBuffer();
  const seen = fx.origin.requests.slice(before);
  assert.equal(seen.length, 2);
  for (const s of seen) {
    assert.equal(s.headers["x-quota-org"], "sec-d");
    assert.equal(s.headers["x-quota-plan"], "sec");
    assert.ok(verifyOriginSignature(s), "the tenant headers carry the gateway's signature");
    assert.equal(s.headers["x-quota-decision"], undefined);
    assert.equal(s.headers["x-quota-extra"], undefined);
    assert.equal(s.headers["x-api-key"], undefined, "the key stays at the edge");
    assert.ok(!JSON.stringify(s.headers).includes("sec-victim"));
  }
  record("Security: tenant headers", "6 spoofed X-Quota-* headers on 2 proxied routes, and without a key", "origin saw only the gateway's signed org and plan, no spoofed header, no API key; keyless request refused");
});

const ADMIN_ENDPOINTS = [
  ["GET", "/plans"],
  ["GET", "/plans/sec"],
  ["PUT", "/plans/sec-new", '{"limits":[{"meter":"requests","limit":1,"period":"month"}]}'],
  ["GET", "/orgs"],
  ["GET", "/orgs/sec-a"],
  ["PUT", "/orgs/sec-new", '{"plan":"sec"}'],
  ["POST", "/orgs/sec-a/keys"],
  ["GET", "/orgs/sec-a/keys"],
  ["DELETE", "/orgs/sec-a/keys/key_x"],
  ["POST", "/orgs/sec-a/reset", "{}"],
  ["POST", "/orgs/sec-a/flush"],
  ["GET", "/orgs/sec-a/reconcile"],
  ["POST", "/orgs/sec-a/reconcile"],
  ["GET", "/orgs/sec-a/usage"],
  ["GET", "/export?from=2026-11-01&to=2026-11-02"],
  ["GET", "/metrics"],
  ["POST", "/stripe/sync"],
  ["POST", "/orgs/sec-a/keys/key_0000000000000000/roll", "{}"],
  ["GET", "/tokens"],
  ["POST", "/tokens", '{"name":"sneaky","scope":"write"}'],
  ["DELETE", "/tokens/tok_0000000000000000"],
  ["GET", "/audit"],
  ["GET", "/orgs?limit=5"],
  ["GET", "/status"],
  ["GET", "/no-such-endpoint"],
];

test("every admin endpoint refuses without the admin token, identically, and changes nothing", async () => {
  const wrongSameLength = ADMIN_TOKEN.replace(/.$/, (x) => (x === "a" ? "b" : "a"));
  const org = await fx.api.key("sec-a");
  const credentials = {
    "no token": {},
    "wrong token, same length": { authorization: `Bearer ${wrongSameLength}` },
    "token as a prefix": { authorization: `Bearer ${ADMIN_TOKEN.slice(0, -1)}` },
    "token plus a byte": { authorization: `Bearer ${ADMIN_TOKEN}x` },
    "Basic scheme": { authorization: `Basic ${Buffer.from(`admin:${ADMIN_TOKEN}`).toString("base64")}` },
    "an org key": { authorization: `Bearer ${org.key}` },
    "token in x-api-key": { "x-api-key": ADMIN_TOKEN },
    "a forged named token": { authorization: "Bearer qga_0123456789abcdef.00000000000000000000000000000000" },
  };
  const state = async () => JSON.stringify(await ledgerQuery(fx.gw.persistTo, "SELECT (SELECT COUNT(*) FROM plans) AS p, (SELECT COUNT(*) FROM orgs) AS o, (SELECT COUNT(*) FROM api_keys) AS k, (SELECT COUNT(revoked_at) FROM api_keys) AS r, (SELECT COUNT(*) FROM counter_resets) AS resets, (SELECT COUNT(*) FROM admin_tokens) AS t, (SELECT COUNT(*) FROM admin_audit) AS audit"));
  const before = await state();
  const usedBefore = await used("sec-a");
  let n = 0;
  const all = new Set();
  for (const [method, path, body] of ADMIN_ENDPOINTS) {
    for (const [name, headers] of Object.entries(credentials)) {
      const r = await fetch(`${fx.gw.url}/_quota/admin${path}`, { method, headers: { ...headers, "content-type": "application/json" }, body });
      assert.equal(r.status, 401, `${method} ${path} with ${name}`);
      all.add(await observe(r));
      n++;
    }
  }
  assert.equal(all.size, 1, `admin refusals differ: ${[...all].slice(0, 2)}`);
  assert.equal(await state(), before, "no refused admin request changed the ledger");
  assert.deepEqual(await used("sec-a"), usedBefore);
  record("Security: admin", `${ADMIN_ENDPOINTS.length} admin endpoints × ${Object.keys(credentials).length} bad credentials (${n} requests)`, "every one 401 with one identical response; plans, orgs, keys, resets and counters unchanged");
});
