// Configuration refuses: a setting that is set and wrong is an exact error at healthz (503, by
// variable) and on every request that needs it (503, the same message), never a quiet default.
// A request that does not need the bad setting is still served.
import { test } from "node:test";
import assert from "node:assert/strict";
import { useGateway } from "../support/harness.mjs";

// Up means serving (its OpenAPI document): healthz is meant to be a 503 here.
const up = "/_quota/openapi.json";
const shards = useGateway({ origin: true, up, vars: { LEDGER_SHARDS: "100", HOURLY_RETENTION_DAYS: "1" } });
const alerts = useGateway({ up, vars: { ALERT_WEBHOOK_URL: "https://hooks.example.com/quota" } });
const routes = useGateway({ origin: true, up, vars: { ROUTES: '[{"path": "v1/x", "meter": "requests"}]' } });

const SHARDS = 'LEDGER_SHARDS: must be a whole number from 1 to 64 (got "100")';

test("healthz names every bad setting with its reason, and answers 503", async () => {
  const r = await shards.api.call("GET", "/_quota/healthz");
  assert.equal(r.status, 503);
  assert.equal(r.json.status, "misconfigured");
  assert.deepEqual(r.json.errors.map((e) => e.message), [
    'HOURLY_RETENTION_DAYS: must be a whole number from 40 to 3650 (got "1")',
    SHARDS,
  ]);
  assert.deepEqual(r.json.errors.map((e) => e.var), ["HOURLY_RETENTION_DAYS", "LEDGER_SHARDS"]);
});

test("a request that needs the bad setting fails closed with the same message; one that does not is served", async () => {
  // The admin API spreads new orgs over the ledger shards: it needs LEDGER_SHARDS.
  const admin = await shards.api.admin("PUT", "/plans/p", { limits: [{ meter: "requests", limit: 5, period: "day" }] });
  assert.equal(admin.status, 503);
  assert.equal(admin.json.type, "urn:quotagate:problem:misconfigured");
  assert.ok(admin.json.detail.includes(SHARDS), admin.json.detail);
  // A proxied request does not: it is still authenticated and refused as ever (no key here).
  assert.equal((await shards.api.call("GET", "/v1/anything")).status, 401);
});

test("alerts configured without WEBHOOK_SECRET: refused by name, never sent unsigned", async () => {
  const r = await alerts.api.call("GET", "/_quota/healthz");
  assert.equal(r.status, 503);
  assert.deepEqual(r.json.errors, [{
    var: "WEBHOOK_SECRET",
    reason: "is required when ALERT_WEBHOOK_URL is set: alerts are signed, never sent unsigned",
    message: "WEBHOOK_SECRET: is required when ALERT_WEBHOOK_URL is set: alerts are signed, never sent unsigned",
  }]);
});

test("bad ROUTES: every proxied request is a 503 naming the rule, the admin API still works", async () => {
  const r = await routes.api.call("GET", "/v1/x", { key: "qg_whatever" });
  assert.equal(r.status, 503);
  assert.equal(r.json.detail, "the deployment is misconfigured: ROUTES[0].path: must start with '/'");
  assert.equal(routes.origin.requests.length, 0);
  const plan = await routes.api.admin("PUT", "/plans/p", { limits: [{ meter: "requests", limit: 5, period: "day" }] });
  assert.ok(plan.status < 300, plan.text);
});

const keySecrets = useGateway({ up, vars: { KEY_SECRETS: "2:rotation-secret-two,2:rotation-secret-too" } });

test("a bad KEY_SECRETS refuses by name, never by value, wherever a key is verified or minted", async () => {
  const r = await keySecrets.api.call("GET", "/_quota/healthz");
  assert.equal(r.status, 503);
  assert.deepEqual(r.json.errors.map((e) => e.message), ["KEY_SECRETS: version 2 is listed twice"]);
  assert.ok(!r.text.includes("rotation-secret"), "no secret in the answer");
  const key = "qg_acme.v2.00000000000000000000000000000000.00000000000000000000000000000000";
  for (const res of [
    await keySecrets.api.call("GET", "/v1/anything", { key }),
    await keySecrets.api.call("GET", "/_quota/v1/usage", { key }),
    await keySecrets.api.admin("POST", "/orgs/acme/keys"),
  ]) {
    assert.equal(res.status, 503, res.text);
    assert.equal(res.json.detail, "the deployment is misconfigured: KEY_SECRETS: version 2 is listed twice");
  }
});
