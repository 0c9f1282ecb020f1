// Stripe Billing Meters end to end against a strict local stand-in: the exact wire format,
// hourly aggregates with deterministic identifiers, exactly-once billing across lost responses,
// duplicate answers and breaker trips, and the 35-day window.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { ledgerQuery, lockLedger } from "../support/gateway.mjs";
import { createStripe } from "../support/stripe.mjs";
import { useGateway } from "../support/harness.mjs";
import { eventually, ADMIN_TOKEN } from "../support/client.mjs";

const SECRET = "sk_test_quotagate";
const stripe = createStripe(SECRET);
const stripePort = await stripe.listen();
after(() => stripe.close());
const fx = useGateway({ vars: { STRIPE_SECRET_KEY: SECRET, STRIPE_API_BASE: `http://127.0.0.1:${stripePort}` }, setup: async ({ api }) => {
  await api.plan("billed", {
    meters: [{ id: "ai_tokens", event_name: "llm_tokens" }],
    limits: [{ meter: "ai_tokens", limit: null, period: "month" }, { meter: "requests", limit: null, period: "month" }],
  });
} });
const sync = async () => {
  const r = await fx.api.admin("POST", "/stripe/sync");
  assert.equal(r.status, 200, r.text);
  return r.json;
};
async function usage(key, events) {
  const r = await fx.api.call("POST", "/_quota/v1/events", { key, body: { events } });
  assert.equal(r.status, 200);
}
async function flushed(org) {
  const r = await fx.api.admin("POST", `/orgs/${org}/flush`);
  assert.equal(r.json.pending, 0);
}


test("exactly once: aggregates per hour, lost responses, duplicate answers and breaker trips", async () => {
  await fx.api.org("st-a", { plan: "billed", stripe_customer_id: "cus_A" });
  await fx.api.org("st-none", { plan: "billed" }); // no Stripe customer: never reported
  const a = (await fx.api.key("st-a")).key;
  const none = (await fx.api.key("st-none")).key;
  await usage(a, [{ id: "a1", meter: "ai_tokens", quantity: 700 }, { id: "a2", meter: "ai_tokens", quantity: 300 }, { id: "a3", meter: "requests", quantity: 5 }]);
  await usage(none, [{ id: "n1", meter: "ai_tokens", quantity: 9 }]);
  await flushed("st-a");
  await flushed("st-none");

  // 1. The first report is sent but its answer is lost.
  stripe.mode = "lose";
  const lost = await sync();
  assert.deepEqual([lost.claimed, lost.sent, lost.delivered, lost.failed], [2, 2, 0, 2]);
  // 2. More usage arrives in the same hour: it goes into a new batch.
  await usage(a, [{ id: "a4", meter: "ai_tokens", quantity: 50 }]);
  await flushed("st-a");
  // 3. Stripe recovers: the lost batches are resent with the same identifiers (Stripe says
  //    duplicate: delivered), the new batch is sent once.
  stripe.mode = "ok";
  const retry = await sync();
  assert.deepEqual([retry.claimed, retry.sent, retry.delivered, retry.failed], [1, 3, 3, 0]);
  assert.deepEqual(stripe.billed(), { "cus_A/llm_tokens": 1050, "cus_A/requests": 5 }, "billed exactly once");
  assert.equal(stripe.errors.length, 0, JSON.stringify(stripe.errors));
  const first = stripe.requests[0];
  assert.equal(first.headers.authorization, `Bearer ${SECRET}`);
  // The bucket, and how much of it was claimed before: the same claim always has the same id.
  assert.match(first.form.identifier, /^qg_st-a_(ai_tokens|requests)_\d+_0$/);
  assert.equal(Number(first.form.timestamp) % 3600, 0, "the timestamp is the hour the usage happened in");
  const unreported = await ledgerQuery(fx.gw.persistTo, "SELECT COUNT(*) AS n FROM usage_hourly WHERE org_id = 'st-a' AND stripe_claimed < quantity");
  assert.equal(unreported[0].n, 0, "every hourly bucket is claimed in full");
  // 4. Nothing left: a new run sends nothing; the org without a customer was never reported.
  const idle = await sync();
  assert.deepEqual([idle.claimed, idle.sent], [0, 0]);
  assert.ok(stripe.requests.every((r) => r.form["payload[stripe_customer_id]"] === "cus_A"));
  const requestsSent = stripe.requests.length;
  const identifiers = new Set(stripe.requests.map((r) => r.form.identifier)).size;
  console.log(`stripe: events=4 aggregates=${identifiers} requests_sent=${requestsSent} duplicates_billed=0 billed=${JSON.stringify(stripe.billed())}`);
  assert.equal(requestsSent, 5);
  assert.equal(identifiers, 3);
});

test("five consecutive failures open the breaker for 15 minutes, visible in metrics", async () => {
  await fx.api.org("st-b", { plan: "billed", stripe_customer_id: "cus_B" });
  const b = (await fx.api.key("st-b")).key;
  // Five batches: five meters-hours are not available, so five syncs of one failing batch.
  await usage(b, [{ id: "b1", meter: "ai_tokens", quantity: 10 }]);
  await flushed("st-b");
  stripe.mode = "fail";
  for (let i = 1; i <= 4; i++) {
    const r = await sync();
    assert.deepEqual([r.failed, r.consecutive_failures, r.breaker], [1, i, "closed"]);
  }
  const tripped = await sync();
  assert.equal(tripped.breaker, "open");
  const before = stripe.requests.length;
  stripe.mode = "ok";
  const paused = await sync();
  assert.deepEqual([paused.sent, paused.breaker], [0, "open"]);
  assert.equal(stripe.requests.length, before, "nothing is sent while the breaker is open");
  const m = await fx.api.call("GET", "/_quota/admin/metrics", { token: ADMIN_TOKEN });
  assert.match(m.text, /^quotagate_stripe_breaker_open 1$/m);
  assert.match(m.text, /^quotagate_stripe_pending_batches 1$/m);
  // Close it by hand (as 15 minutes would) and the batch goes out once.
  const lock = await lockLedger(fx.gw.persistTo);
  lock.exec("UPDATE stripe_state SET open_until = 0 WHERE id = 1");
  lock.release();
  const healed = await sync();
  assert.deepEqual([healed.delivered, healed.breaker], [1, "closed"]);
  assert.equal(stripe.billed()["cus_B/llm_tokens"], 10);
  assert.match((await fx.api.call("GET", "/_quota/admin/metrics", { token: ADMIN_TOKEN })).text, /^quotagate_stripe_breaker_open 0$/m);
});

test("usage older than Stripe's 35-day window is reported as an error, not dropped silently", async () => {
  await fx.api.org("st-old", { plan: "billed", stripe_customer_id: "cus_OLD" });
  const old = Date.now() - 40 * 86_400_000;
  const lock = await lockLedger(fx.gw.persistTo);
  lock.exec(`INSERT INTO usage_events (org_id, event_id, meter, quantity, ts, day, source, recorded_at) VALUES ('st-old', 'o1', 'requests', 3, ${old}, '${new Date(old).toISOString().slice(0, 10)}', 'event', ${old})`);
  lock.release();
  const before = stripe.requests.length;
  const r = await sync();
  assert.equal(r.expired, 1);
  assert.equal(stripe.requests.length, before, "not sent");
  const [batch] = await ledgerQuery(fx.gw.persistTo, "SELECT status, value, last_error FROM stripe_batches WHERE org_id = 'st-old'");
  assert.deepEqual([batch.status, batch.value], ["expired", 3]);
  assert.match(batch.last_error, /35-day window/);
  // The log line reaches wrangler's output a moment after the response.
  await eventually(() => /"msg":"stripe batch expired"/.test(fx.gw.logs()));
  assert.match(fx.gw.logs(), /"msg":"stripe batch expired"/);
});
