// Threshold alerts end to end: fired by decisions at 80%, 95% and 100%, once per level per
// window even under a concurrent burst, delivered as signed webhooks to a real receiver, retried
// with backoff, recorded in D1, and dead after ALERT_MAX_ATTEMPTS.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { ledgerQuery } from "../support/gateway.mjs";
import { createReceiver } from "../support/receiver.mjs";
import { eventually } from "../support/client.mjs";
import { useGateway } from "../support/harness.mjs";

const WEBHOOK_SECRET = "test-webhook-secret";
const rx = createReceiver();
const base = `http://127.0.0.1:${await rx.listen()}`;
after(() => rx.close());
const fx = useGateway({ vars: { WEBHOOK_SECRET, ALERT_WEBHOOK_URL: `${base}/ok/default`, ALERT_MAX_ATTEMPTS: "3" }, setup: async ({ api }) => {
  await api.plan("alerting", { limits: [{ meter: "rows", limit: 100, period: "month", mode: "hard" }, { meter: "rows", limit: 1000, period: "minute" }] });
} });

async function org(id, webhook) {
  await fx.api.org(id, webhook ? { plan: "alerting", webhook_url: `${base}${webhook}` } : { plan: "alerting" });
  return (await fx.api.key(id)).key;
}
const events = (key, ids, enforce = true) =>
  fx.api.call("POST", "/_quota/v1/events", { key, body: { enforce, events: ids.map((id) => ({ id, meter: "rows", quantity: 1 })) } });
const seen = (orgId) => rx.requests.filter((r) => JSON.parse(r.body).org_id === orgId);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function verify(r) {
  const [t, v1] = r.headers["x-quota-webhook-signature"].split(",").map((p) => p.split("=")[1]);
  const mac = crypto.createHmac("sha256", WEBHOOK_SECRET).update(`${t}.${r.body}`).digest("hex");
  return v1 === mac && Math.abs(Date.now() / 1000 - Number(t)) < 300;
}

test("a concurrent burst fires each level exactly once, signed; hovering never re-fires", async () => {
  const key = await org("al-burst", "/ok/burst");
  const results = await Promise.all(Array.from({ length: 200 }, (_, i) => events(key, [`b${i}`])));
  const accepted = results.filter((r) => r.json.results[0].status === "accepted").length;
  assert.equal(accepted, 100);
  await eventually(() => seen("al-burst").length >= 3, { timeout: 10_000 });
  await sleep(1_500);
  const got = seen("al-burst");
  assert.equal(got.length, 3, "one delivery per level");
  const bodies = got.map((r) => JSON.parse(r.body));
  assert.deepEqual(bodies.map((b) => [b.level, b.threshold_pct]).sort(), [["critical", 95], ["over", 100], ["warning", 80]]);
  assert.ok(bodies.every((b) => b.meter === "rows" && b.policy === "rows-month" && b.limit === 100 && b.period === "month" && b.timestamp));
  assert.equal(new Set(bodies.map((b) => b.id)).size, 3);
  assert.ok(bodies.every((b) => b.id.startsWith("alrt_al-burst_rows-month_")), "alert ids are unique across orgs");
  assert.ok(got.every(verify), "a receiver can verify every signature");
  assert.ok(got.every((r) => r.url === "/ok/burst" && r.headers["x-quota-webhook-id"] === JSON.parse(r.body).id));
  // Hover around the thresholds in the same window: reset, climb past 80% and 95% again.
  await fx.api.admin("POST", "/orgs/al-burst/reset", { meter: "rows" });
  await events(key, Array.from({ length: 97 }, (_, i) => `h${i}`));
  await sleep(1_500);
  assert.equal(seen("al-burst").length, 3, "no re-fire within the period");
  const usage = await fx.api.call("GET", "/_quota/v1/usage", { key });
  assert.deepEqual(usage.json.alerts.map((a) => [a.level, a.delivery.status]).sort(), [["critical", "delivered"], ["over", "delivered"], ["warning", "delivered"]]);
});

test("a failing receiver gets retries with backoff; every attempt is in D1", async () => {
  const key = await org("al-retry", "/fail-2/retry");
  await events(key, Array.from({ length: 80 }, (_, i) => `r${i}`));
  await eventually(() => seen("al-retry").some((r) => r.status === 200), { timeout: 15_000 });
  const got = seen("al-retry");
  assert.deepEqual(got.map((r) => r.status), [500, 500, 200]);
  assert.equal(new Set(got.map((r) => r.headers["x-quota-webhook-id"])).size, 1, "the same alert each time");
  const gaps = [got[1].at - got[0].at, got[2].at - got[1].at];
  assert.ok(gaps[0] >= 900 && gaps[1] >= 1_900, `exponential backoff: ${gaps}`);
  const rows = await eventually(async () => {
    const r = await ledgerQuery(fx.gw.persistTo, "SELECT attempt, status_code, outcome FROM alert_deliveries WHERE org_id = 'al-retry' ORDER BY attempt");
    return r.length === 3 && r;
  });
  assert.deepEqual(rows.map((r) => [r.attempt, r.status_code, r.outcome]), [[1, 500, "retry"], [2, 500, "retry"], [3, 200, "delivered"]]);
});

test("after ALERT_MAX_ATTEMPTS failures the alert is dead; orgs without a URL use the default", async () => {
  const key = await org("al-dead", "/always-fail/dead");
  await events(key, Array.from({ length: 80 }, (_, i) => `d${i}`));
  const rows = await eventually(async () => {
    const r = await ledgerQuery(fx.gw.persistTo, "SELECT attempt, outcome FROM alert_deliveries WHERE org_id = 'al-dead' ORDER BY attempt");
    return r.length === 3 && r;
  }, { timeout: 15_000 });
  assert.deepEqual(rows.map((r) => r.outcome), ["retry", "retry", "dead"]);
  await sleep(4_500);
  assert.equal(seen("al-dead").length, 3, "no attempt after dead");
  const usage = await fx.api.call("GET", "/_quota/v1/usage", { key });
  assert.deepEqual(usage.json.alerts.map((a) => [a.level, a.delivery.status, a.delivery.attempts]), [["warning", "dead", 3]]);
  const plain = await org("al-default");
  await events(plain, Array.from({ length: 80 }, (_, i) => `p${i}`));
  await eventually(() => seen("al-default").length === 1, { timeout: 10_000 });
  assert.equal(seen("al-default")[0].url, "/ok/default");
});
