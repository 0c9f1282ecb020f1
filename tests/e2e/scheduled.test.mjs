// The scheduled handler (cron), triggered through wrangler's local endpoint: reconciliation
// reports drift in a log line, and retention prunes raw events that are rolled up and (for
// Stripe customers) reported, while rollups stay.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, ledgerQuery, lockLedger } from "../support/gateway.mjs";
import { client, eventually, ADMIN_TOKEN, KEY_SECRET, ORIGIN_SECRET } from "../support/client.mjs";

let gw, api;
before(async () => {
  // RETENTION_DAYS=0: every raw event is old enough to prune.
  gw = await startGateway({ vars: { ADMIN_TOKEN, KEY_SECRET, ORIGIN_SECRET, ORIGIN_URL: "http://127.0.0.1:9", RETENTION_DAYS: "0" } });
  api = client(gw.url);
  await api.plan("basic", { limits: [{ meter: "rows", limit: 1000, period: "month" }] });
});
after(async () => {
  await gw?.stop();
});

test("cron: drift is logged, and retention prunes only rolled-up, reported raw events", async () => {
  await api.org("org-plain", { plan: "basic" });
  await api.org("org-stripe", { plan: "basic", stripe_customer_id: "cus_test123" });
  for (const org of ["org-plain", "org-stripe"]) {
    const { key } = await api.key(org);
    await api.call("POST", "/_quota/v1/events", { key, body: { events: [{ id: "a", meter: "rows", quantity: 4 }, { id: "b", meter: "rows", quantity: 6 }] } });
    await api.admin("POST", `/orgs/${org}/flush`);
  }
  // Drift for org-plain: the ledger loses an event behind the gateway's back.
  const lock = await lockLedger(gw.persistTo);
  lock.exec("DELETE FROM usage_events WHERE org_id = 'org-plain' AND event_id = 'a'");
  lock.release();
  const r = await fetch(`${gw.url}/cdn-cgi/local/scheduled`);
  assert.equal(r.status, 200);
  const logs = await eventually(() => /"msg":"scheduled"/.test(gw.logs()) && gw.logs());
  assert.match(logs, /"msg":"reconcile drift".*"org":"org-plain".*"total_drift":4/);
  assert.doesNotMatch(logs, /"msg":"reconcile drift".*"org":"org-stripe"/);
  const line = logs.split("\n").find((l) => l.includes('"msg":"scheduled"'));
  const summary = JSON.parse(line.slice(line.indexOf("{"), line.lastIndexOf("}") + 1));
  assert.deepEqual(
    [summary.orgs_checked, summary.orgs_with_drift, summary.events_pruned, summary.retention_days],
    [2, 1, 1, 0],
    line,
  );
  // The drift is also a metric.
  const m = await api.call("GET", "/_quota/admin/metrics", { token: ADMIN_TOKEN });
  assert.equal(m.status, 200);
  assert.match(m.headers.get("content-type"), /^text\/plain; version=0.0.4/);
  assert.match(m.text, /^# TYPE quotagate_reconcile_drift_units gauge$/m);
  assert.match(m.text, /^quotagate_reconcile_drift_units\{org="org-plain"\} 4$/m);
  assert.match(m.text, /^quotagate_reconcile_drift_units\{org="org-stripe"\} 0$/m);
  assert.match(m.text, /^# TYPE quotagate_outbox_depth gauge$/m);
  assert.match(m.text, /^quotagate_outbox_depth\{org="org-plain"\} 0$/m, "flushed before the cron ran");
  assert.match(m.text, /^quotagate_ledger_flush_failures\{org="org-plain"\} 0$/m);
  assert.match(m.text, /^quotagate_stripe_breaker_open 0$/m);
  // Two events per org were decided (and accepted) in the DO.
  assert.match(m.text, /^quotagate_decisions_total\{org="org-plain",meter="rows",outcome="allowed"\} 2$/m);
  assert.match(gw.logs(), /"msg":"decision".*"outcome":"accepted".*"source":"events"/);
  assert.equal((await api.call("GET", "/_quota/admin/metrics")).status, 401);
  const raw = await ledgerQuery(gw.persistTo, "SELECT org_id, COUNT(*) AS n FROM usage_events GROUP BY org_id ORDER BY org_id");
  assert.deepEqual(raw.map((x) => [x.org_id, x.n]), [["org-stripe", 2]], "unreported Stripe usage is kept; the rest is pruned");
  const rolled = await ledgerQuery(gw.persistTo, "SELECT org_id, SUM(quantity) AS q FROM usage_daily GROUP BY org_id ORDER BY org_id");
  assert.deepEqual(rolled.map((x) => [x.org_id, x.q]), [["org-plain", 10], ["org-stripe", 10]], "rollups are kept");
});
