// The scheduled handler (cron), triggered through wrangler's local endpoint: reconciliation
// reports drift in a log line, and tiered retention keeps hourly rows at least 40 days and daily
// and audit rows RETENTION_DAYS.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, ledgerQuery, lockLedger } from "../support/gateway.mjs";
import { client, eventually, ADMIN_TOKEN, KEY_SECRET, ORIGIN_SECRET } from "../support/client.mjs";

let gw, api;
before(async () => {
  // RETENTION_DAYS=100; hourly rows keep their floor of 40 days.
  gw = await startGateway({ vars: { ADMIN_TOKEN, KEY_SECRET, ORIGIN_SECRET, ORIGIN_URL: "http://127.0.0.1:9", RETENTION_DAYS: "100", HOURLY_RETENTION_DAYS: "1" } });
  api = client(gw.url);
  await api.plan("basic", { limits: [{ meter: "rows", limit: 1000, period: "month" }] });
});
after(async () => {
  await gw?.stop();
});

test("cron: drift is logged, and tiered retention prunes hourly rows after 40 days and daily rows after RETENTION_DAYS", async () => {
  await api.org("org-plain", { plan: "basic" });
  await api.org("org-stripe", { plan: "basic", stripe_customer_id: "cus_test123" });
  for (const org of ["org-plain", "org-stripe"]) {
    const { key } = await api.key(org);
    await api.call("POST", "/_quota/v1/events", { key, body: { events: [{ id: "a", meter: "rows", quantity: 4 }, { id: "b", meter: "rows", quantity: 6 }] } });
    await api.admin("POST", `/orgs/${org}/flush`);
  }
  // Drift for org-plain: the ledger loses 4 units behind the gateway's back.
  const lock = await lockLedger(gw.persistTo);
  lock.exec("UPDATE usage_hourly SET quantity = quantity - 4 WHERE org_id = 'org-plain'");
  // Old rows of another org, each side of each tier's limit.
  const day = 86_400_000;
  const hourly = (age) => `INSERT INTO usage_hourly (org_id, meter, start, event_name, quantity, events) VALUES ('org-old', 'rows', ${Math.floor((Date.now() - age) / 3_600_000) * 3_600_000}, 'rows', 1, 1)`;
  const daily = (age) => `INSERT INTO usage_daily (org_id, meter, day, quantity, events) VALUES ('org-old', 'rows', '${new Date(Date.now() - age).toISOString().slice(0, 10)}', 1, 1)`;
  lock.exec(hourly(39 * day));
  lock.exec(hourly(41 * day));
  lock.exec(daily(99 * day));
  lock.exec(daily(101 * day));
  lock.exec(`INSERT INTO usage_events (org_id, event_id, meter, quantity, ts, day, source, recorded_at, rolled) VALUES ('org-old', 'x', 'rows', 1, ${Date.now() - 101 * day}, '2000-01-01', 'event', 0, 0)`);
  lock.release();
  const r = await fetch(`${gw.url}/cdn-cgi/local/scheduled`);
  assert.equal(r.status, 200);
  const logs = await eventually(() => /"msg":"scheduled"/.test(gw.logs()) && gw.logs());
  assert.match(logs, /"msg":"reconcile drift".*"org":"org-plain".*"total_drift":4/);
  assert.doesNotMatch(logs, /"msg":"reconcile drift".*"org":"org-stripe"/);
  const line = logs.split("\n").find((l) => l.includes('"msg":"scheduled"'));
  const summary = JSON.parse(line.slice(line.indexOf("{"), line.lastIndexOf("}") + 1));
  assert.deepEqual(
    [summary.orgs_checked, summary.orgs_with_drift, summary.rows_pruned, summary.retention_days, summary.hourly_retention_days],
    [2, 1, 3, 100, 40],
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
  const count = async (t) => (await ledgerQuery(gw.persistTo, `SELECT COUNT(*) AS n FROM ${t} WHERE org_id = 'org-old'`))[0].n;
  assert.deepEqual([await count("usage_hourly"), await count("usage_daily"), await count("usage_events")], [1, 1, 0], "each tier keeps its own window");
  const rolled = await ledgerQuery(gw.persistTo, "SELECT org_id, SUM(quantity) AS q FROM usage_daily WHERE org_id != 'org-old' GROUP BY org_id ORDER BY org_id");
  assert.deepEqual(rolled.map((x) => [x.org_id, x.q]), [["org-plain", 10], ["org-stripe", 10]], "recent rows are kept");
});
