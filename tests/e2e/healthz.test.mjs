// The pipeline end to end: the built worker under workerd answers /_quota/healthz after a real
// round trip to the migrated D1 ledger and to a SQLite-backed Durable Object.
import { test } from "node:test";
import assert from "node:assert/strict";
import { useGateway } from "../support/harness.mjs";

const fx = useGateway();

test("healthz reports the ledger and the org DO", async () => {
  const r = await fetch(`${fx.gw.url}/_quota/healthz`);
  assert.equal(r.status, 200);
  assert.equal(r.headers.get("content-type"), "application/json");
  const body = await r.json();
  assert.equal(body.status, "ok");
  assert.deepEqual(body.checks.ledger, { ok: true, plans: 0 });
  assert.deepEqual(body.checks.org_do, { ok: true, storage: "sqlite" });
});

test("healthz refuses other methods with a problem body", async () => {
  const r = await fetch(`${fx.gw.url}/_quota/healthz`, { method: "POST" });
  assert.equal(r.status, 405);
  assert.equal(r.headers.get("content-type"), "application/problem+json");
  const body = await r.json();
  assert.equal(body.status, 405);
  assert.equal(body.type, "urn:quotagate:problem:method-not-allowed");
});

test("unknown gateway endpoints are 404 problems", async () => {
  const r = await fetch(`${fx.gw.url}/_quota/nope`);
  assert.equal(r.status, 404);
  assert.equal((await r.json()).detail, "no endpoint /_quota/nope");
});
