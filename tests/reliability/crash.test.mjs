// The worker process (the faithful host: Node + workerd) killed with SIGKILL in the middle of a
// load, then restarted on its persisted state, several times. Every acknowledged event must be
// in the ledger afterwards, exactly once; batches that got no answer are retried with the same
// ids, as a client would, and are counted once too.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import { startGateway, ledgerQuery, tempDir } from "../support/gateway.mjs";
import { client } from "../support/client.mjs";
import { NO_ORIGIN } from "../support/harness.mjs";
import { record, scaled } from "../support/report.mjs";

// CRASH_ROUNDS overrides the scale's count (3 in `make test`, 20 in `make reliability`).
const ROUNDS = Number(process.env.CRASH_ROUNDS ?? scaled(3, 20));
const dir = tempDir("quotagate-crash-");
// The ledger flush every 2 s, so the alarm's own flushes are what the test waits for.
const vars = { ORIGIN_URL: NO_ORIGIN, LEDGER_FLUSH_SECS: "2" };
let gw;
after(async () => {
  await gw?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

test(`SIGKILL mid-load and restart, ${ROUNDS} times: acknowledged = ledger, no duplicates`, async () => {
  gw = await startGateway({ vars, persistTo: dir });
  let api = client(gw.url);
  await api.plan("crash", { limits: [{ meter: "rows", limit: null, period: "month" }] });
  await api.org("org-crash", { plan: "crash" });
  const { key } = await api.key("org-crash");
  const acked = new Set();
  const sent = new Map(); // batch id → events, for every batch ever sent
  let unanswered = [];
  let seq = 0;

  for (let round = 0; round < ROUNDS; round++) {
    let stop = false;
    const worker = async () => {
      while (!stop) {
        const batch = `b${seq++}`;
        const events = Array.from({ length: 10 }, (_, i) => ({ id: `${batch}-${i}`, meter: "rows", quantity: 1 }));
        sent.set(batch, events);
        try {
          const r = await api.call("POST", "/_quota/v1/events", { key, body: { events } });
          if (r.status !== 200) throw new Error(`status ${r.status}`);
          for (const x of r.json.results) if (x.status !== "rejected") acked.add(x.id);
        } catch {
          unanswered.push(batch);
          return;
        }
      }
    };
    const load = Array.from({ length: 8 }, worker);
    await new Promise((r) => setTimeout(r, 700 + 300 * round));
    await gw.kill(); // mid-load: requests are in flight
    stop = true;
    await Promise.all(load);
    gw = await startGateway({ vars, persistTo: dir });
    api = client(gw.url);
    // Retry what got no answer, with the same ids: counted at most once.
    for (const batch of unanswered) {
      const r = await api.call("POST", "/_quota/v1/events", { key, body: { events: sent.get(batch) } });
      assert.equal(r.status, 200);
      for (const x of r.json.results) acked.add(x.id);
    }
    unanswered = [];
  }

  // No manual flush: the DO's alarm drains its buckets by itself after the restarts. Each event
  // is 1 unit, so the hourly tier's events and units both count acknowledged events.
  const inLedger = async () =>
    (await ledgerQuery(dir, "SELECT COALESCE(SUM(events), 0) AS n, COALESCE(SUM(quantity), 0) AS q FROM usage_hourly WHERE org_id = 'org-crash'"))[0];
  const t0 = Date.now();
  while ((await inLedger()).n < acked.size && Date.now() - t0 < 30_000) await new Promise((r) => setTimeout(r, 250));
  await new Promise((r) => setTimeout(r, 2_500)); // one more flush interval: anything extra would show
  const { n, q: hourly } = await inLedger();
  const missing = Math.max(0, acked.size - n);
  const duplicates = Math.max(0, n - acked.size);
  const [{ q }] = await ledgerQuery(dir, "SELECT SUM(quantity) AS q FROM usage_daily WHERE org_id = 'org-crash'");
  console.log(`crash: rounds=${ROUNDS} batches=${sent.size} acknowledged=${acked.size} in_ledger=${n} missing=${missing} duplicates=${duplicates}`);
  record(
    "SIGKILL mid-load, restart on persisted state",
    `${ROUNDS} kills of wrangler + workerd under 8 concurrent event writers; unanswered batches retried with the same ids`,
    `${acked.size} acknowledged, ${n} in the ledger, ${missing} lost, ${duplicates} duplicated; counter and both tiers agree`,
  );
  assert.equal(missing, 0, "acknowledged but not in the ledger");
  assert.equal(duplicates, 0);
  assert.equal(hourly, acked.size, "the hourly tier agrees");
  assert.equal(q, acked.size, "the daily tier agrees");
  assert.equal(await api.used("org-crash", "rows-month"), acked.size, "the counter agrees");
  assert.equal((await api.admin("GET", "/orgs/org-crash/reconcile")).json.total_drift, 0);
});
