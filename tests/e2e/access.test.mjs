// Access end to end: a KEY_SECRET rotation across restarts (old keys work until their version is
// retired, then get the 401 of any unknown key), key rolls with a grace period, expiring keys,
// origin and webhook signatures under every listed secret during a rotation, named admin tokens
// with scopes, and an audit row for every admin write that never holds a secret.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { startGateway, tempDir } from "../support/gateway.mjs";
import { client, eventually, verifyOriginSignature, ADMIN_TOKEN, KEY_SECRET } from "../support/client.mjs";
import { createReceiver } from "../support/receiver.mjs";
import { gatewayWithOrigin } from "../support/harness.mjs";
import fs from "node:fs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const ORIGIN_NEW = "origin-secret-2026-12";
const ORIGIN_OLD = "test-origin-secret";
const HOOK_NEW = "hook-secret-2026-12";
const HOOK_OLD = "hook-secret-2026-06";
const rx = createReceiver();
const hooks = `http://127.0.0.1:${await rx.listen()}`;
after(() => rx.close());

const ROUTES = JSON.stringify([{ path: "/v1/*", meter: "requests" }]);
const fx = gatewayWithOrigin(
  { ROUTES, ORIGIN_SECRET: `${ORIGIN_NEW},${ORIGIN_OLD}`, WEBHOOK_SECRET: `${HOOK_NEW},${HOOK_OLD}` },
  async ({ api }) => {
    await api.plan("acc", { limits: [{ meter: "requests", limit: 10, period: "month" }] });
  },
);

const status = (api, key) => api.call("GET", "/_quota/v1/usage/status", { key }).then((r) => r.status);
const keys = async (api, org) => {
  const r = await api.admin("GET", `/orgs/${org}/keys`);
  assert.equal(r.status, 200, r.text);
  return Object.fromEntries(r.json.keys.map((k) => [k.key_id, k]));
};

/** How a webhook receiver verifies, as the README shows: t within 5 minutes, any v1= under its secret. */
function hookVerifies(r, secret) {
  const parts = r.headers["x-quota-webhook-signature"].split(",").map((p) => p.trim().split("="));
  const t = parts.find(([k]) => k === "t")?.[1];
  const want = Buffer.from(crypto.createHmac("sha256", secret).update(`${t}.${r.body}`).digest("hex"));
  const fresh = Math.abs(Date.now() / 1000 - Number(t)) < 300;
  return fresh && parts.some(([k, v]) => k === "v1" && Buffer.from(v).length === want.length && crypto.timingSafeEqual(Buffer.from(v), want));
}

test("a KEY_SECRET rotation: old keys work until their version is retired, then get 401; the audit log is pruned at RETENTION_DAYS", async () => {
  const dir = tempDir("quotagate-rotation-");
  const start = (vars) => startGateway({ persistTo: dir, vars: { ORIGIN_URL: "http://127.0.0.1:9", ...vars } });
  try {
    // Version 1 alone: KEY_SECRET, as every deployment before versions.
    let gw = await start({});
    let api = client(gw.url);
    await api.plan("rot", { limits: [{ meter: "requests", limit: 100, period: "month" }] });
    await api.org("rot-a", { plan: "rot" });
    const v1 = (await api.admin("POST", "/orgs/rot-a/keys")).json;
    assert.match(v1.key, /^qg_rot-a\.v1\.[0-9a-f]{32}\.[0-9a-f]{32}$/);
    assert.equal(v1.secret_version, 1);
    assert.equal(await status(api, v1.key), 200);
    let health = (await api.call("GET", "/_quota/healthz")).json;
    assert.deepEqual(health.secrets.keys, { current_version: 1, accepted_versions: [1] });
    await gw.stop();

    // Step 1 of a rotation: KEY_SECRETS names version 2 (current); KEY_SECRET stays, as version 1.
    const V2 = "rotated-key-secret-v2";
    gw = await start({ KEY_SECRETS: `2:${V2}` });
    api = client(gw.url);
    health = (await api.call("GET", "/_quota/healthz")).json;
    assert.deepEqual(health.secrets.keys, { current_version: 2, accepted_versions: [2, 1] });
    assert.equal(await status(api, v1.key), 200, "a version 1 key still works");
    const v2 = (await api.admin("POST", "/orgs/rot-a/keys")).json;
    assert.match(v2.key, /^qg_rot-a\.v2\./);
    assert.equal(await status(api, v2.key), 200);
    const listed = await keys(api, "rot-a");
    assert.equal(listed[v1.key_id].secret_version, 1);
    assert.equal(listed[v2.key_id].secret_version, 2);
    await gw.stop();

    // Step 2: version 1 retired (KEY_SECRET removed). Its keys are unknown keys; the clock is two
    // days on, so the cron prunes the audit rows of the steps above (RETENTION_DAYS=1).
    gw = await start({ KEY_SECRET: "", KEY_SECRETS: `2:${V2}`, QUOTA_CLOCK_OFFSET_MS: String(2 * 86_400_000), RETENTION_DAYS: "1" });
    api = client(gw.url);
    health = (await api.call("GET", "/_quota/healthz")).json;
    assert.deepEqual(health.secrets.keys, { current_version: 2, accepted_versions: [2] });
    const retired = await api.call("GET", "/_quota/v1/usage/status", { key: v1.key });
    const forged = await api.call("GET", "/_quota/v1/usage/status", { key: v1.key.replace(/.$/, (c) => (c === "0" ? "1" : "0")) });
    assert.equal(retired.status, 401);
    assert.deepEqual(retired.json, forged.json, "a retired version's key gets the 401 of any unknown key");
    assert.equal(await status(api, v2.key), 200, "a version 2 key works on");
    const proxied = await api.call("GET", "/v1/x", { key: v1.key });
    assert.equal(proxied.status, 401, "the proxy refuses it too, with no I/O");
    const before = (await api.admin("GET", "/audit?limit=500")).json.entries.length;
    assert.ok(before >= 4, `${before} audit rows before the cron`);
    assert.equal((await gw.scheduled()).status, 200);
    await eventually(async () => (await api.admin("GET", "/audit")).json.entries.length === 0, { timeout: 5_000 });
    assert.deepEqual((await api.admin("GET", "/audit")).json.entries, [], "rows older than RETENTION_DAYS are pruned");
    await gw.stop();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("a key roll keeps the old key for its grace period, then it gets 401", async () => {
  const { api } = fx;
  await api.org("roll-a", { plan: "acc" });
  const old = (await api.admin("POST", "/orgs/roll-a/keys")).json;
  const r = await api.admin("POST", `/orgs/roll-a/keys/${old.key_id}/roll`, { grace_secs: 2 });
  assert.equal(r.status, 201, r.text);
  const rolled = r.json;
  assert.notEqual(rolled.key, old.key);
  assert.equal(rolled.rolled.key_id, old.key_id);
  const until = Date.parse(rolled.rolled.expires_at);
  assert.ok(Math.abs(until - (Date.now() + 2_000)) < 1_500, rolled.rolled.expires_at);
  assert.equal(await status(api, old.key), 200, "the old key works during the grace period");
  assert.equal(await status(api, rolled.key), 200);
  assert.equal((await api.call("GET", "/v1/x", { key: old.key })).status, 200, "and through the proxy");
  let listed = await keys(api, "roll-a");
  assert.equal(listed[old.key_id].state, "rolling");
  assert.equal(listed[old.key_id].replaced_by, rolled.key_id);
  const again = await api.admin("POST", `/orgs/roll-a/keys/${old.key_id}/roll`, {});
  assert.equal(again.status, 409, "a rolled key is not rolled twice");
  await sleep(Math.max(0, until - Date.now()) + 200);
  assert.equal(await status(api, old.key), 401, "after the grace period the old key is refused");
  assert.equal((await api.call("GET", "/v1/x", { key: old.key })).status, 401);
  assert.equal(await status(api, rolled.key), 200, "the new key works on");
  listed = await keys(api, "roll-a");
  assert.equal(listed[old.key_id].state, "expired");
  // grace 0: the old key ends at once.
  const now = (await api.admin("POST", `/orgs/roll-a/keys/${rolled.key_id}/roll`, { grace_secs: 0 })).json;
  assert.equal(await status(api, rolled.key), 401);
  assert.equal(await status(api, now.key), 200);
  for (const k of Object.values(await keys(api, "roll-a"))) {
    assert.deepEqual(Object.keys(k).sort(), ["created_at", "expires_at", "key_id", "last_used", "prefix", "replaced_by", "revoked_at", "secret_version", "state"]);
  }
});

test("an expired key is a 401 like any other; listings show creation, last use, expiry and version, never a hash", async () => {
  const { api } = fx;
  await api.org("exp-a", { plan: "acc" });
  const expiresAt = new Date(Date.now() + 2_000).toISOString();
  const k = (await api.admin("POST", "/orgs/exp-a/keys", { expires_at: expiresAt })).json;
  const idle = (await api.admin("POST", "/orgs/exp-a/keys")).json;
  assert.equal(Date.parse(k.expires_at), Date.parse(expiresAt));
  assert.equal(await status(api, k.key), 200);
  assert.equal((await api.call("GET", "/v1/x", { key: k.key })).status, 200);
  const listed = await api.admin("GET", "/orgs/exp-a/keys");
  const mine = listed.json.keys.find((x) => x.key_id === k.key_id);
  assert.equal(mine.last_used, new Date().toISOString().slice(0, 10), "used today");
  assert.equal(mine.secret_version, 1);
  assert.equal(Date.parse(mine.expires_at), Date.parse(expiresAt));
  assert.equal(listed.json.keys.find((x) => x.key_id === idle.key_id).last_used, null, "never used");
  assert.ok(!listed.text.includes(k.key) && !listed.text.includes(crypto.createHash("sha256").update(k.key).digest("hex")), "no plaintext, no hash");
  await sleep(Math.max(0, Date.parse(expiresAt) - Date.now()) + 200);
  const gone = await api.call("GET", "/_quota/v1/usage/status", { key: k.key });
  assert.equal(gone.status, 401);
  assert.equal((await api.call("GET", "/v1/x", { key: k.key })).status, 401, "the proxy refuses it");
  assert.equal((await api.call("GET", "/_quota/v1/usage/summary", { key: k.key })).status, 401, "and so do ledger reads");
  assert.equal((await keys(api, "exp-a"))[k.key_id].state, "expired");
  const past = await api.admin("POST", "/orgs/exp-a/keys", { expires_at: "2020-01-01T00:00:00Z" });
  assert.equal(past.status, 400);
  assert.match(past.json.detail, /^expires_at: must be in the future/);
});

test("during a rotation every request and webhook carries a signature under each listed secret", async () => {
  const { api, origin } = fx;
  const o = await api.newOrg("acc", { prefix: "sig", webhook_url: `${hooks}/ok/sig?token=receiver-capability-123` });
  const r = await api.call("GET", "/v1/signed?x=1", { key: o.key });
  assert.equal(r.status, 200);
  const seen = origin.requests.findLast((q) => q.path === "/v1/signed");
  assert.match(seen.headers["x-quota-signature"], /^v2=[0-9a-f]{64},v2=[0-9a-f]{64}$/);
  assert.ok(verifyOriginSignature(seen, ORIGIN_NEW), "an origin that has the new secret verifies");
  assert.ok(verifyOriginSignature(seen, ORIGIN_OLD), "an origin still on the old secret verifies");
  assert.ok(!verifyOriginSignature(seen, "some-other-secret"), "any other secret does not");
  // Past 80% of the month: a signed alert.
  for (let i = 0; i < 8; i++) await api.call("GET", `/v1/fill-${i}`, { key: o.key });
  const alert = await eventually(() => rx.requests.find((q) => q.url.startsWith("/ok/sig")), { timeout: 10_000 });
  assert.ok(alert, "an alert was delivered");
  assert.match(alert.headers["x-quota-webhook-signature"], /^t=\d+,v1=[0-9a-f]{64},v1=[0-9a-f]{64}$/);
  assert.ok(hookVerifies(alert, HOOK_NEW) && hookVerifies(alert, HOOK_OLD), "a receiver verifies under either secret");
  assert.ok(!hookVerifies(alert, "some-other-secret"));
  const health = (await api.call("GET", "/_quota/healthz")).json;
  assert.deepEqual([health.secrets.origin_signatures, health.secrets.webhook_signatures], [2, 2]);
});

test("named admin tokens: read sees everything and writes nothing (403); write writes; revoked and expired tokens are 401", async () => {
  const { api } = fx;
  const mk = async (body) => {
    const r = await api.admin("POST", "/tokens", body);
    assert.equal(r.status, 201, r.text);
    return r.json;
  };
  const reader = await mk({ name: "support dashboard", scope: "read" });
  assert.match(reader.token, /^qga_[0-9a-f]{16}\.[0-9a-f]{32}$/);
  assert.equal(reader.created_by, "ADMIN_TOKEN");
  const as = (token) => (method, path, body) => api.call(method, `/_quota/admin${path}`, { token, body });
  const read = as(reader.token);
  await api.org("tok-a", { plan: "acc" });
  for (const path of ["/plans", "/plans/acc", "/orgs/tok-a", "/orgs/tok-a/keys", "/orgs/tok-a/usage", "/metrics", "/tokens", "/audit", "/export?from=2026-12-01&to=2026-12-02", "/orgs/tok-a/reconcile"]) {
    assert.equal((await read("GET", path)).status, 200, `read token GET ${path}`);
  }
  const writes = [
    ["PUT", "/plans/acc", { limits: [{ meter: "requests", limit: 10, period: "month" }] }],
    ["PUT", "/orgs/tok-a", { plan: "acc" }],
    ["POST", "/orgs/tok-a/keys", {}],
    ["POST", "/orgs/tok-a/reset", {}],
    ["POST", "/orgs/tok-a/reconcile", {}],
    ["POST", "/tokens", { name: "escalate", scope: "write" }],
    ["DELETE", `/tokens/${reader.token_id}`],
  ];
  for (const [method, path, body] of writes) {
    const r = await read(method, path, body);
    assert.equal(r.status, 403, `read token ${method} ${path}: ${r.text}`);
    assert.equal(r.json.type, "urn:quotagate:problem:forbidden", r.text);
    assert.match(r.json.detail, /^token 'support dashboard' has scope read; \S+ needs a token with scope write$/);
  }
  assert.equal((await api.admin("GET", "/orgs/tok-a/keys")).json.keys.length, 0, "nothing was written");
  const writer = await mk({ name: "deploy bot", scope: "write" });
  const write = as(writer.token);
  assert.equal((await write("POST", "/orgs/tok-a/keys", {})).status, 201);
  const listed = await api.admin("GET", "/tokens");
  assert.ok(!listed.text.includes(reader.token) && !listed.text.includes(writer.token), "no plaintext in the listing");
  assert.ok(!listed.text.includes(crypto.createHash("sha256").update(writer.token).digest("hex")), "no hash either");
  assert.equal((await write("DELETE", `/tokens/${writer.token_id}`)).status, 200, "a token can revoke itself");
  assert.equal((await write("GET", "/plans")).status, 401, "a revoked token is refused");
  const brief = await mk({ name: "brief", scope: "read", expires_at: new Date(Date.now() + 1_500).toISOString() });
  assert.equal((await as(brief.token)("GET", "/plans")).status, 200);
  await sleep(1_800);
  assert.equal((await as(brief.token)("GET", "/plans")).status, 401, "an expired token is refused");
  const tampered = reader.token.replace(/.$/, (c) => (c === "0" ? "1" : "0"));
  assert.equal((await as(tampered)("GET", "/plans")).status, 401, "a token whose secret part is wrong is refused");
  assert.equal((await as(reader.token)("GET", "/plans")).status, 200);
});

test("every admin write is in the audit log, by token name, with its status, and no secret is", async () => {
  const { api } = fx;
  const writer = (await api.admin("POST", "/tokens", { name: "auditor test", scope: "write" })).json;
  const reader = (await api.admin("POST", "/tokens", { name: "audit reader", scope: "read" })).json;
  const w = (method, path, body) => api.call(method, `/_quota/admin${path}`, { token: writer.token, body });
  const expect = [];
  const did = async (action, target, method, path, body, status = 200) => {
    const r = await w(method, path, body);
    assert.equal(r.status, status, `${method} ${path}: ${r.text}`);
    expect.push({ action, target, status });
    return r.json;
  };
  await did("plan.put", "plan/aud", "PUT", "/plans/aud", { limits: [{ meter: "requests", limit: 10, period: "month" }] }, 201);
  await did("org.put", "org/aud-a", "PUT", "/orgs/aud-a", { plan: "aud", webhook_url: "https://hooks.example.com/x?token=hook-capability-secret", stripe_customer_id: "cus_secretcustomer" }, 201);
  const k1 = await did("key.create", "org/aud-a", "POST", "/orgs/aud-a/keys", {}, 201);
  const k2 = await did("key.roll", `org/aud-a/key/${k1.key_id}`, "POST", `/orgs/aud-a/keys/${k1.key_id}/roll`, { grace_secs: 60 }, 201);
  await did("key.revoke", `org/aud-a/key/${k2.key_id}`, "DELETE", `/orgs/aud-a/keys/${k2.key_id}`);
  await did("org.reset", "org/aud-a", "POST", "/orgs/aud-a/reset", { meter: "requests" });
  await did("org.flush", "org/aud-a", "POST", "/orgs/aud-a/flush", {});
  await did("org.repair", "org/aud-a", "POST", "/orgs/aud-a/reconcile", {});
  await did("stripe.sync", "stripe", "POST", "/stripe/sync", {});
  const t = await did("token.create", "tokens", "POST", "/tokens", { name: "short lived", scope: "read" }, 201);
  await did("token.revoke", `token/${t.token_id}`, "DELETE", `/tokens/${t.token_id}`);
  await did("plan.put", "plan/aud", "PUT", "/plans/aud", { limits: "none" }, 400);
  // A read token's attempt is recorded, as denied.
  assert.equal((await api.call("PUT", "/_quota/admin/plans/aud", { token: reader.token, body: { limits: [] } })).status, 403);

  // Paged, newest first, three at a time.
  const rows = [];
  let next = null;
  do {
    const page = await api.call("GET", `/_quota/admin/audit?limit=3${next ? `&before=${next}` : ""}`, { token: reader.token });
    assert.equal(page.status, 200, page.text);
    assert.ok(page.json.entries.length <= 3);
    rows.push(...page.json.entries);
    next = page.json.next_before;
  } while (next !== null);
  assert.deepEqual(rows.map((r) => r.seq), [...rows.map((r) => r.seq)].sort((a, b) => b - a), "newest first");
  const mine = rows.filter((r) => r.token_name === "auditor test").reverse();
  assert.deepEqual(mine.map((r) => ({ action: r.action, target: r.target, status: r.status })), expect);
  assert.ok(mine.every((r) => r.token_id === writer.token_id && r.summary.length > 0 && !Number.isNaN(Date.parse(r.at))));
  const denied = rows.find((r) => r.token_name === "audit reader");
  assert.deepEqual([denied.action, denied.status, denied.summary], ["plan.put", 403, "denied: the token's scope is read"]);
  assert.ok(rows.some((r) => r.token_name === "ADMIN_TOKEN" && r.action === "token.create"), "the bootstrap token is named too");
  const roll = mine.find((r) => r.action === "key.roll");
  assert.match(roll.summary, new RegExp(`^rolled key ${k1.key_id} to ${k2.key_id} `));
  const org = mine.find((r) => r.action === "org.put");
  assert.match(org.summary, /webhook_url set; stripe_customer_id set/);

  const all = JSON.stringify(rows);
  const secrets = [ADMIN_TOKEN, KEY_SECRET, ORIGIN_NEW, ORIGIN_OLD, HOOK_NEW, HOOK_OLD, writer.token, reader.token, t.token, k1.key, k2.key,
    "hook-capability-secret", "cus_secretcustomer", crypto.createHash("sha256").update(k1.key).digest("hex")];
  for (const s of secrets) assert.ok(!all.includes(s), `the audit log holds no secret (${s.slice(0, 6)}…)`);
});
