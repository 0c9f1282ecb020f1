// A panic is a bug, but one must not take the isolate down with it: worker/entry.mjs makes a fresh
// wasm instance before the next call into Rust, and the org Durable Object a fresh Rust object on
// it (workerd may also replace a DO whose request broke; either way the object answers). The
// panics are injected with QUOTA_FAULTS=panic (tests only); without that setting the fault paths
// are plain 404s.
import { test } from "node:test";
import assert from "node:assert/strict";
import { gatewayWithOrigin, useGateway } from "../support/harness.mjs";
import { eventually } from "../support/client.mjs";

const fx = gatewayWithOrigin({ QUOTA_FAULTS: "panic" }, async ({ api }) => {
  await api.plan("small", { limits: [{ meter: "requests", limit: 5, period: "day" }] });
});

async function healthy() {
  const r = await fx.api.call("GET", "/_quota/healthz");
  assert.equal(r.status, 200, JSON.stringify(r.json));
  assert.equal(r.json.checks.org_do.ok, true);
}

test("a panic in the Worker: that request fails, the next ones are answered and still counted", async () => {
  await fx.api.org("org-panic", { plan: "small" });
  const { key } = await fx.api.key("org-panic");
  assert.equal((await fx.api.call("GET", "/a", { key })).status, 200);

  const r = await fx.api.call("GET", "/_quota/fault/panic");
  assert.equal(r.status, 500);
  assert.ok(await eventually(() => /fault injected: panic/.test(fx.gw.logs())), fx.gw.logs());

  await healthy();
  assert.ok(/reinitializing the wasm instance/.test(fx.gw.logs()), fx.gw.logs());
  // The counters live in the DO, not in the isolate that panicked: nothing was lost.
  for (let i = 0; i < 4; i++) assert.equal((await fx.api.call("GET", "/b", { key })).status, 200);
  assert.equal((await fx.api.call("GET", "/c", { key })).status, 429);
});

test("a panic in a Durable Object: the object answers its next message", async () => {
  // The DO and the Worker share this host's isolate, so the panic also ends the wasm instance
  // the waiting Worker request was running on: that one request gets no answer (here, until the
  // client gives up). In Cloudflare a DO usually runs in an isolate of its own.
  const r = await fetch(`${fx.gw.url}/_quota/fault/panic-do`, { signal: AbortSignal.timeout(3000) }).then(
    (res) => res.status,
    (e) => e.name,
  );
  assert.ok(r === "TimeoutError" || r >= 500, `the panicking request was answered ${r}`);
  assert.ok(await eventually(() => /fault injected: panic in the org DO/.test(fx.gw.logs())), fx.gw.logs());
  // healthz pings the very object that panicked (`_health`).
  await healthy();
  await healthy();
});

const plain = useGateway();

test("without QUOTA_FAULTS=panic the fault paths do not exist", async () => {
  for (const p of ["/_quota/fault/panic", "/_quota/fault/panic-do"]) {
    const r = await plain.api.call("GET", p);
    assert.equal(r.status, 404, p);
  }
  assert.equal((await plain.api.call("GET", "/_quota/healthz")).status, 200);
});
