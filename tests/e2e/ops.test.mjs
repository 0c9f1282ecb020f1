// The operations pictures against the gateway that really runs: the Prometheus text it exports
// passes `promtool check metrics`, and every metric name the Grafana dashboard
// (ops/grafana/quotagate.json) and the alert rules (ops/prometheus/quotagate-rules.yml) query is
// one it exports once it has served, reported, flushed and run its cron. (The rules themselves
// are checked and unit-tested by `promtool` in `make test-ops`.)
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { gatewayWithOrigin } from "../support/harness.mjs";
import { ROOT } from "../support/gateway.mjs";
import { eventually } from "../support/client.mjs";

const PROMTOOL = process.env.PROMTOOL;
const fx = gatewayWithOrigin({ ORG_REPORT_SECS: "1", LEDGER_FLUSH_SECS: "1", METRICS_FLUSH_SECS: "0" });

/** Every `quotagate_…` name a PromQL expression in `text` names. */
const namesIn = (text) => new Set(text.match(/quotagate_[a-z_]+/g) ?? []);

test("every metric the dashboard and the alert rules query is one the gateway exports", { skip: !PROMTOOL && !process.env.CI && "PROMTOOL is not set (make test sets it)" }, async () => {
  assert.ok(PROMTOOL, "PROMTOOL names promtool");
  const o = await fx.api.newOrg("ops", { limits: [{ meter: "requests", limit: 3, period: "minute" }] });
  for (let i = 0; i < 5; i++) await fx.api.call("GET", `/v1/ops/${i}`, { key: o.key });
  await fx.api.admin("POST", `/orgs/${o.id}/flush`);
  assert.equal((await fx.gw.scheduled()).status, 200);
  const scrape = async () => (await fx.api.admin("GET", "/metrics")).text;
  // The org's report (every ORG_REPORT_SECS, here 1 s) publishes its gauges.
  const text = await eventually(async () => {
    const t = await scrape();
    const report = new RegExp(`^quotagate_org_report_timestamp_seconds\\{org="${o.id}"\\} \\d+$`, "m");
    return report.test(t) && /^quotagate_cron_last_run_timestamp_seconds\{\} \d+$/m.test(t) ? t : null;
  }, { timeout: 15_000, every: 250 });
  assert.ok(text, "the org's report and the cron's heartbeat are exported");
  const lint = spawnSync(PROMTOOL, ["check", "metrics"], { input: text, encoding: "utf8" });
  assert.equal(lint.status, 0, `promtool check metrics:\n${lint.stdout}${lint.stderr}`);

  const samples = new Set([...text.matchAll(/^(quotagate_[a-z_]+)[{ ]/gm)].map((m) => m[1]));
  const histograms = new Set([...text.matchAll(/^# TYPE (quotagate_[a-z_]+) histogram$/gm)].map((m) => m[1]));
  const families = new Set([...text.matchAll(/^# TYPE (quotagate_[a-z_]+) /gm)].map((m) => m[1]));
  const exported = (n) => samples.has(n) || families.has(n) || [..."_bucket _count _sum".split(" ")].some((s) => n.endsWith(s) && histograms.has(n.slice(0, -s.length)));
  const dashboard = JSON.parse(fs.readFileSync(path.join(ROOT, "ops/grafana/quotagate.json"), "utf8"));
  const exprs = dashboard.panels.flatMap((p) => p.targets.map((t) => t.expr));
  assert.ok(exprs.length >= 15, `${exprs.length} dashboard queries`);
  const rules = fs.readFileSync(path.join(ROOT, "ops/prometheus/quotagate-rules.yml"), "utf8");
  const ruleExprs = [...rules.matchAll(/^\s+expr: (.+)$/gm)].map((m) => m[1]);
  assert.ok(ruleExprs.length >= 7);
  const queried = new Set([...exprs, ...ruleExprs].flatMap((e) => [...namesIn(e)]));
  const missing = [...queried].filter((n) => !exported(n));
  assert.deepEqual(missing, [], `queried but not exported: ${missing.join(", ")}`);
  // And the other way: every family the gateway exports is on the dashboard.
  const shown = [...families].filter((f) => ![...queried].some((q) => q === f || q.startsWith(`${f}_`)));
  assert.deepEqual(shown, [], `exported but on no panel: ${shown.join(", ")}`);
  // Every panel has a datasource input Grafana asks for at import.
  assert.deepEqual(dashboard.__inputs.map((i) => i.name), ["DS_PROMETHEUS"]);
});
