// D1 failing for a while under load, with every request retried under the same idempotency key:
// usage events (same event ids) and proxied requests (same Idempotency-Key). The test holds
// SQLite's exclusive lock on D1's file, a real fault with no code hook. Afterwards the ledger
// must hold every acknowledged event exactly once, and the counter must agree with it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { gatewayWithOrigin } from "../support/harness.mjs";
import { ledgerQuery, lockLedger } from "../support/gateway.mjs";
import { record, scaled } from "../support/report.mjs";

const BATCHES = scaled(5, 50); // of 100 events
const PROXIED = scaled(100, 1000);
const OUTAGE_MS = scaled(4000, 15000);

const fx = gatewayWithOrigin({ PROXY_RELEASE_WINDOW_SECS: "2" });

test("D1 down for a while, every request sent twice with the same key: 0 lost, 0 duplicated", async () => {
  await fx.api.plan("faults", {
    limits: [
      { meter: "requests", limit: 1_000_000, period: "month" },
      { meter: "rows", limit: 1_000_000, period: "month" },
    ],
  });
  await fx.api.org("org-faults", { plan: "faults" });
  const { key } = await fx.api.key("org-faults");
  const ackedEvents = new Set();
  const ackedRequests = new Set();
  let sentEvents = 0;
  let sentRequests = 0;
  const lock = await lockLedger(fx.gw.persistTo);
  const started = Date.now();
  try {
    const events = async (b) => {
      const body = { events: Array.from({ length: 100 }, (_, i) => ({ id: `f-${b}-${i}`, meter: "rows", quantity: 1 })) };
      for (let attempt = 0; attempt < 2; attempt++) {
        sentEvents += 100;
        const r = await fx.api.call("POST", "/_quota/v1/events", { key, body });
        assert.equal(r.status, 200, "decisions do not need D1");
        for (const x of r.json.results) {
          assert.equal(x.status, attempt === 0 ? "accepted" : "duplicate", JSON.stringify(x));
          ackedEvents.add(x.id);
        }
      }
    };
    const proxied = async (i) => {
      for (let attempt = 0; attempt < 2; attempt++) {
        sentRequests++;
        const r = await fetch(`${fx.gw.url}/v1/things/${i}`, { headers: { "x-api-key": key, "idempotency-key": `req-${i}` } });
        await r.arrayBuffer();
        assert.equal(r.status, 200);
        ackedRequests.add(`req-${i}`);
      }
    };
    const work = [];
    for (let b = 0; b < BATCHES; b++) work.push(events(b));
    for (let i = 0; i < PROXIED; i += 10) work.push((async () => { for (let j = i; j < i + 10; j++) await proxied(j); })());
    await Promise.all(work);
    const left = OUTAGE_MS - (Date.now() - started);
    if (left > 0) await new Promise((r) => setTimeout(r, left));
    const [{ n: during }] = await ledgerQueryWhileLocked(lock);
    assert.equal(during, 0, "nothing reached D1 while it was down");
  } finally {
    lock.release();
  }
  const outage = Date.now() - started;
  // The DO alarms retry with backoff (up to 5 min); a flush makes the wait deterministic.
  // Each event and request is 1 unit: the hourly tier's sums count them.
  const expected = ackedEvents.size + ackedRequests.size;
  const sums = async () => Object.fromEntries((await ledgerQuery(fx.gw.persistTo,
    "SELECT meter, SUM(events) AS n, SUM(quantity) AS q FROM usage_hourly WHERE org_id = 'org-faults' GROUP BY meter")).map((r) => [r.meter, r]));
  let got = {};
  for (let i = 0; i < 120; i++) {
    const f = await fx.api.admin("POST", "/orgs/org-faults/flush");
    got = await sums();
    if (f.status === 200 && f.json.pending === 0) break;
    await new Promise((r) => setTimeout(r, 500));
  }
  const events = got.rows?.n ?? 0;
  const requests = got.requests?.n ?? 0;
  const lostEvents = Math.max(0, ackedEvents.size - events);
  const lostRequests = Math.max(0, ackedRequests.size - requests);
  const duplicates = Math.max(0, events - ackedEvents.size) + Math.max(0, requests - ackedRequests.size);
  const extra = (got.rows?.q ?? 0) - events + (got.requests?.q ?? 0) - requests;
  record(
    "D1 failing for a while",
    `D1 locked for ${(outage / 1000).toFixed(1)} s under load: ${sentEvents} event posts (${ackedEvents.size} ids, each sent twice) and ${sentRequests} proxied requests (${ackedRequests.size} Idempotency-Keys, each sent twice)`,
    `${expected} acknowledged, ${events + requests} in the ledger, ${lostEvents + lostRequests} lost, ${duplicates + extra} duplicated or extra`,
  );
  record(
    "Retries with the same idempotency keys",
    `every event batch and proxied request above sent twice with the same ids`,
    `${ackedEvents.size} events and ${ackedRequests.size} requests counted once each; counter = ${await fx.api.used("org-faults", "rows-month")} rows, ${await fx.api.used("org-faults", "requests-month")} requests`,
  );
  assert.deepEqual([lostEvents, lostRequests, duplicates, extra], [0, 0, 0, 0]);
  assert.equal(await fx.api.used("org-faults", "rows-month"), ackedEvents.size);
  assert.equal(await fx.api.used("org-faults", "requests-month"), ackedRequests.size);
  assert.equal((await fx.api.admin("GET", "/orgs/org-faults/reconcile")).json.total_drift, 0);
});

/** Reads D1 through the test's own locked connection (the lock holder may read). */
async function ledgerQueryWhileLocked(lock) {
  return lock.query("SELECT COUNT(*) AS n FROM usage_hourly WHERE org_id = 'org-faults'");
}
