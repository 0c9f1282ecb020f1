// Reports without a fan-out: each active org's DO reconciles and publishes its own gauges
// (ORG_REPORT_SECS after its usage), and the scheduled handler (cron, triggered through
// Miniflare's local endpoint) visits no org: it reports to Stripe and runs tiered retention,
// which keeps hourly rows at least 40 days and daily and audit rows RETENTION_DAYS.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ledgerQuery, lockLedger } from "../support/gateway.mjs";
import { useGateway } from "../support/harness.mjs";
import { eventually, ADMIN_TOKEN } from "../support/client.mjs";

// RETENTION_DAYS=100; hourly rows at their floor of 40 days (less is a configuration error:
// tests/e2e/config.test.mjs).
const fx = useGateway({ vars: { RETENTION_DAYS: "100", HOURLY_RETENTION_DAYS: "40", ORG_REPORT_SECS: "1" }, setup: async ({ api }) => {
  await api.plan("basic", { limits: [{ meter: "rows", limit: 1000, period: "month" }] });
} });

test("orgs report their own drift and gauges; the cron visits no org and prunes each tier after its own retention", async () => {
  await fx.api.org("org-plain", { plan: "basic" });
  await fx.api.org("org-stripe", { plan: "basic", stripe_customer_id: "cus_test123" });
  const keys = {};
  for (const org of ["org-plain", "org-stripe"]) {
    keys[org] = (await fx.api.key(org)).key;
    await fx.api.call("POST", "/_quota/v1/events", { key: keys[org], body: { events: [{ id: "a", meter: "rows", quantity: 4 }, { id: "b", meter: "rows", quantity: 6 }] } });
    await fx.api.admin("POST", `/orgs/${org}/flush`);
  }
  // Each org reports a second after its usage, by itself.
  const metrics = async () => (await fx.api.call("GET", "/_quota/admin/metrics", { token: ADMIN_TOKEN })).text;
  assert.ok(await eventually(async () => /^quotagate_reconcile_drift_units\{org="org-stripe"\} 0$/m.test(await metrics()), { timeout: 15_000 }), "org-stripe reported");
  // Drift for org-plain: the ledger loses 4 units behind the gateway's back.
  const lock = await lockLedger(fx.gw.persistTo);
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
  // More usage: org-plain reports again, now with the drift, in a log line and a gauge.
  await fx.api.call("POST", "/_quota/v1/events", { key: keys["org-plain"], body: { events: [{ id: "c", meter: "rows", quantity: 1 }] } });
  const logs = await eventually(() => /"msg":"reconcile drift"/.test(fx.gw.logs()) && fx.gw.logs(), { timeout: 15_000 });
  assert.match(logs, /"msg":"reconcile drift".*"org":"org-plain".*"total_drift":4/);
  assert.doesNotMatch(logs, /"msg":"reconcile drift".*"org":"org-stripe"/);
  assert.ok(await eventually(async () => /^quotagate_reconcile_drift_units\{org="org-plain"\} 4$/m.test(await metrics()), { timeout: 15_000 }), "org-plain reported its drift");
  const r = await fx.gw.scheduled();
  assert.equal(r.status, 200);
  const done = await eventually(() => /"msg":"scheduled"/.test(fx.gw.logs()) && fx.gw.logs());
  const line = done.split("\n").find((l) => l.includes('"msg":"scheduled"'));
  const summary = JSON.parse(line.slice(line.indexOf("{"), line.lastIndexOf("}") + 1));
  assert.deepEqual([summary.rows_pruned, summary.retention_days, summary.hourly_retention_days, "orgs_checked" in summary], [3, 100, 40, false], line);
  const m = await fx.api.call("GET", "/_quota/admin/metrics", { token: ADMIN_TOKEN });
  assert.equal(m.status, 200);
  assert.match(m.headers.get("content-type"), /^text\/plain; version=0.0.4/);
  assert.match(m.text, /^# TYPE quotagate_reconcile_drift_units gauge$/m);
  assert.match(m.text, /^quotagate_reconcile_drift_units\{org="org-plain"\} 4$/m);
  assert.match(m.text, /^quotagate_reconcile_drift_units\{org="org-stripe"\} 0$/m);
  assert.match(m.text, /^# TYPE quotagate_outbox_depth gauge$/m);
  assert.match(m.text, /^quotagate_outbox_depth\{org="org-plain"\} 0$/m, "the report flushes first");
  assert.match(m.text, /^quotagate_ledger_flush_failures\{org="org-plain"\} 0$/m);
  assert.match(m.text, /^quotagate_stripe_breaker_open 0$/m);
  // The events decided (and accepted) in each DO: two for org-stripe, three for org-plain.
  assert.match(m.text, /^quotagate_decisions_total\{org="org-stripe",meter="rows",outcome="allowed"\} 2$/m);
  assert.match(m.text, /^quotagate_decisions_total\{org="org-plain",meter="rows",outcome="allowed"\} 3$/m);
  assert.match(fx.gw.logs(), /"msg":"decision".*"outcome":"accepted".*"source":"events"/);
  assert.equal((await fx.api.call("GET", "/_quota/admin/metrics")).status, 401);
  const count = async (t) => (await ledgerQuery(fx.gw.persistTo, `SELECT COUNT(*) AS n FROM ${t} WHERE org_id = 'org-old'`))[0].n;
  assert.deepEqual([await count("usage_hourly"), await count("usage_daily"), await count("usage_events")], [1, 1, 0], "each tier keeps its own window");
  const rolled = await ledgerQuery(fx.gw.persistTo, "SELECT org_id, SUM(quantity) AS q FROM usage_daily WHERE org_id != 'org-old' GROUP BY org_id ORDER BY org_id");
  assert.deepEqual(rolled.map((x) => [x.org_id, x.q]), [["org-plain", 11], ["org-stripe", 10]], "recent rows are kept");
});
