// What the usage systems quotagate replaces already do, end to end: composite meters with a
// breakdown, `within_limit` in the limits view, reconciliation that repairs small drift by itself
// and alerts on large drift, and a limit on the usage API itself.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { gatewayWithOrigin } from "../support/harness.mjs";
import { ledgerQuery, lockLedger } from "../support/gateway.mjs";
import { createReceiver } from "../support/receiver.mjs";
import { eventually, ADMIN_TOKEN } from "../support/client.mjs";

// The operator's alert URL is this receiver.
const receiver = createReceiver();
const receiverPort = await receiver.listen();
after(() => receiver.close());
const WEBHOOK_SECRET = "parity-webhook-secret";
const fx = gatewayWithOrigin(
  {
    ORG_REPORT_SECS: "1",
    USAGE_API_READS_PER_MINUTE: "3",
    USAGE_API_CALLS_PER_MINUTE: "40",
    WEBHOOK_SECRET,
    ALERT_WEBHOOK_URL: `http://127.0.0.1:${receiverPort}/ok`,
  },
  async ({ api }) => {
    await api.plan("ai", {
      meters: [
        { id: "ai_tokens_input" },
        { id: "ai_tokens_output" },
        { id: "ai_tokens", unit: "tokens", sum_of: ["ai_tokens_input", "ai_tokens_output"] },
      ],
      limits: [
        { meter: "ai_tokens", limit: 1000, period: "month", mode: "hard" },
        { meter: "ai_tokens_output", limit: 500, period: "month", mode: "soft" },
      ],
    });
  },
);
const newOrg = (plan = "ai") => fx.api.newOrg(plan, { prefix: "par" });
const events = (o, list, enforce = false) =>
  fx.api.call("POST", "/_quota/v1/events", { key: o.key, body: { events: list, enforce } });

test("a composite meter: limited on the sum, recorded on the parts, shown with a breakdown, in the ledger as both", async () => {
  const o = await newOrg();
  const first = await events(o, [
    { id: "i1", meter: "ai_tokens_input", quantity: 600 },
    { id: "o1", meter: "ai_tokens_output", quantity: 300 },
  ]);
  assert.deepEqual(first.json.results.map((r) => r.status), ["accepted", "accepted"]);
  // Enforced on the sum, atomically: 900 + 200 would pass the composite's 1,000.
  const over = await events(o, [{ id: "o2", meter: "ai_tokens_output", quantity: 200 }], true);
  assert.deepEqual(over.json.results[0], { id: "o2", status: "rejected", reason: "would exceed the hard limit ai_tokens-month (900 used of 1000)" });
  // Usage is recorded on the parts, never on the composite itself.
  const direct = await events(o, [{ id: "c1", meter: "ai_tokens", quantity: 1 }]);
  assert.equal(direct.json.results[0].reason, "meter 'ai_tokens' is the sum of ai_tokens_input, ai_tokens_output: record usage on those meters");
  const u = await fx.api.call("GET", "/_quota/v1/usage", { key: o.key });
  const m = Object.fromEntries(u.json.meters.map((x) => [x.policy, x]));
  assert.deepEqual([m["ai_tokens-month"].used, m["ai_tokens-month"].unit, m["ai_tokens-month"].breakdown], [900, "tokens", { ai_tokens_input: 600, ai_tokens_output: 300 }]);
  assert.deepEqual([m["ai_tokens-month"].within_limit, m["ai_tokens_output-month"].within_limit], [true, true]);
  // A proxied check on the composite sees the sum.
  const check = await fx.api.call("POST", "/_quota/v1/check", { key: o.key, body: { meter: "ai_tokens", quantity: 101 } });
  assert.deepEqual([check.json.allowed, check.json.status], [false, 429]);
  // The ledger knows the composite and its parts.
  assert.equal((await fx.api.admin("POST", `/orgs/${o.id}/flush`)).json.pending, 0);
  const ledger = await ledgerQuery(fx.gw.persistTo, "SELECT meter, SUM(quantity) AS q FROM usage_hourly WHERE org_id = ? GROUP BY meter ORDER BY meter", o.id);
  assert.deepEqual(ledger.map((r) => [r.meter, r.q]), [["ai_tokens", 900], ["ai_tokens_input", 600], ["ai_tokens_output", 300]]);
  const summary = await fx.api.call("GET", "/_quota/v1/usage/summary?days=1", { key: o.key });
  assert.deepEqual(Object.keys(summary.json.summary_by_type).sort(), ["ai_tokens", "ai_tokens_input", "ai_tokens_output"]);
  assert.equal(summary.json.summary_by_type.ai_tokens.total_quantity, 900);
  const today = new Date().toISOString().slice(0, 10);
  const exp = await fx.api.admin("GET", `/export?from=${today}&to=${today}`);
  assert.deepEqual(exp.json.rows.filter((r) => r.org_id === o.id).map((r) => [r.meter, r.quantity]), [["ai_tokens", 900], ["ai_tokens_input", 600], ["ai_tokens_output", 300]]);
  assert.equal((await fx.api.admin("GET", `/orgs/${o.id}/reconcile`)).json.total_drift, 0);
  // Past a soft limit, within_limit is false while the level says over.
  await events(o, [{ id: "o3", meter: "ai_tokens_output", quantity: 250 }]);
  const after = await fx.api.call("GET", "/_quota/v1/usage", { key: o.key });
  const out = after.json.meters.find((x) => x.policy === "ai_tokens_output-month");
  assert.deepEqual([out.used, out.level, out.within_limit], [550, "over", false]);
});

test("a composite that names an unknown meter, itself, or a cycle is a 400 naming the field", async () => {
  const bad = [
    [{ meters: [{ id: "a" }, { id: "ab", sum_of: ["a", "nope"] }], limits: [{ meter: "ab", limit: 1, period: "day" }] },
      "meters[1].sum_of[1]: unknown meter 'nope' (declare it in meters, or give it a limit)"],
    [{ meters: [{ id: "a" }, { id: "ab", sum_of: ["a", "ab"] }], limits: [{ meter: "ab", limit: 1, period: "day" }] },
      "meters[1].sum_of[1]: 'ab': a composite meter cannot include itself"],
    [{ meters: [{ id: "a" }, { id: "x", sum_of: ["a", "y"] }, { id: "y", sum_of: ["a", "x"] }], limits: [{ meter: "x", limit: 1, period: "day" }] },
      "meters[1].sum_of[1]: 'y' leads back to 'x': composites cannot form a cycle (x → y → x)"],
    [{ meters: [{ id: "peak", aggregation: "max" }, { id: "a" }, { id: "s", sum_of: ["a", "peak"] }], limits: [{ meter: "s", limit: 1, period: "day" }] },
      "meters[2].sum_of[1]: 'peak' aggregates by max; a composite sums sum meters"],
    [{ meters: [{ id: "a" }, { id: "s", sum_of: ["a"] }], limits: [] }, "meters[1].sum_of: must list at least two meters"],
  ];
  for (const [doc, detail] of bad) {
    const r = await fx.api.admin("PUT", "/plans/bad-composite", doc);
    assert.equal(r.status, 400, JSON.stringify(doc));
    assert.equal(r.json.detail, detail);
  }
});

test("reconciliation repairs small drift by itself and alerts on large drift", async () => {
  await fx.api.plan("flat", { limits: [{ meter: "rows", limit: 1_000_000, period: "month" }] });
  const small = await newOrg("flat");
  const large = await newOrg("flat");
  await events(small, [{ id: "s1", meter: "rows", quantity: 100 }]);
  await events(large, [{ id: "l1", meter: "rows", quantity: 10 }]);
  for (const o of [small, large]) await fx.api.admin("POST", `/orgs/${o.id}/flush`);
  // Injected drift: the ledger loses 3 of 100 (3% ≤ 5%) and 4 of 10 (40%).
  const lock = await lockLedger(fx.gw.persistTo);
  lock.exec(`UPDATE usage_hourly SET quantity = quantity - 3 WHERE org_id = '${small.id}'`);
  lock.exec(`UPDATE usage_hourly SET quantity = quantity - 4 WHERE org_id = '${large.id}'`);
  lock.release();
  // More usage: each org reports a second later, by itself.
  await events(small, [{ id: "s2", meter: "rows", quantity: 1 }]);
  await events(large, [{ id: "l2", meter: "rows", quantity: 1 }]);
  const repaired = await eventually(async () => (await ledgerQuery(fx.gw.persistTo, "SELECT policy, counter, expected FROM reconcile_repairs WHERE org_id = ?", small.id))[0], { timeout: 15_000 });
  assert.deepEqual({ ...repaired }, { policy: "rows-month", counter: 101, expected: 98 }, "the repair is recorded");
  assert.equal(await fx.api.used(small.id, "rows-month"), 98, "small drift: the counter takes the ledger's value");
  const logs = await eventually(() => /"msg":"reconcile drift over threshold"/.test(fx.gw.logs()) && fx.gw.logs(), { timeout: 15_000 });
  assert.match(logs, new RegExp(`"msg":"reconcile drift over threshold".*"org":"${large.id}".*"total_drift":4`));
  assert.doesNotMatch(logs, new RegExp(`"msg":"reconcile drift over threshold".*"org":"${small.id}"`));
  assert.equal(await fx.api.used(large.id, "rows-month"), 11, "large drift: nothing is repaired");
  // The operator's alert: a signed webhook to ALERT_WEBHOOK_URL.
  const alert = receiver.requests.find((r) => JSON.parse(r.body).type === "quota.reconcile_drift");
  assert.ok(alert, "the drift alert reached the operator");
  const body = JSON.parse(alert.body);
  assert.deepEqual([body.org_id, body.total_drift, body.threshold_pct], [large.id, 4, 5]);
  const [ts, v1] = alert.headers["x-quota-webhook-signature"].split(",").map((p) => p.split("=")[1]);
  assert.equal(v1, crypto.createHmac("sha256", WEBHOOK_SECRET).update(`${ts}.${alert.body}`).digest("hex"), "signed");
  assert.ok(!receiver.requests.some((r) => JSON.parse(r.body).org_id === small.id), "small drift raises no alert");
  assert.equal((await ledgerQuery(fx.gw.persistTo, "SELECT COUNT(*) AS n FROM reconcile_repairs WHERE org_id = ?", large.id))[0].n, 0);
  const metrics = (await fx.api.call("GET", "/_quota/admin/metrics", { token: ADMIN_TOKEN })).text;
  assert.match(metrics, new RegExp(`^quotagate_reconcile_repairs_total\\{org="${small.id}"\\} 1$`, "m"));
  assert.match(metrics, new RegExp(`^quotagate_reconcile_drift_units\\{org="${large.id}"\\} 4$`, "m"));
  assert.equal((await fx.api.admin("GET", `/orgs/${small.id}/reconcile`)).json.total_drift, 0);
});

test("the usage API has its own per-org limit: ledger reads and other calls, refused like any limit", async () => {
  await fx.api.plan("api", { limits: [{ meter: "requests", limit: 1000, period: "month" }, { meter: "rows", limit: 1000, period: "month" }] });
  const o = await newOrg("api");
  const reads = [];
  for (let i = 0; i < 4; i++) reads.push(await fx.api.call("GET", "/_quota/v1/usage/summary?days=1", { key: o.key }));
  assert.deepEqual(reads.map((r) => r.status), [200, 200, 200, 429]);
  const refused = reads[3];
  assert.equal(refused.json.type, "urn:quotagate:problem:quota-exceeded");
  assert.deepEqual(refused.json["violated-policies"], ["usage_api_reads-minute"]);
  assert.match(refused.headers.get("ratelimit"), /^"usage_api_reads-minute";r=0;t=\d+$/);
  assert.ok(Number(refused.headers.get("retry-after")) > 0);
  // History shares the read allowance; another org's allowance is its own.
  assert.equal((await fx.api.call("GET", `/_quota/v1/usage/history?meter=rows&from=2026-11-01&to=2026-11-02`, { key: o.key })).status, 429);
  const other = await newOrg("api");
  assert.equal((await fx.api.call("GET", "/_quota/v1/usage/summary?days=1", { key: other.key })).status, 200);
  // Checks, events and usage views share the (higher) call allowance: 40 a minute here.
  const calls = [];
  for (let i = 0; i < 41; i++) calls.push((await fx.api.call("GET", "/_quota/v1/usage/status", { key: o.key })).status);
  assert.deepEqual([calls.filter((s) => s === 200).length, calls.at(-1)], [40, 429]);
  // Proxied requests spend the plan's limits only.
  assert.equal((await fx.api.call("GET", "/x", { key: o.key })).status, 200);
  // A wrong key is still a 401, never a 429.
  assert.equal((await fx.api.call("GET", "/_quota/v1/usage/summary?days=1", { key: `${o.key}x` })).status, 401);
});
