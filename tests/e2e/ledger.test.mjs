// The usage ledger end to end: every committed unit reaches D1 exactly once, aggregated into
// hourly and daily buckets, through D1 failures, replays, releases and reconciliation. D1 is
// read directly from its SQLite file to check.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ledgerQuery, lockLedger } from "../support/gateway.mjs";
import { gatewayWithOrigin } from "../support/harness.mjs";
import { eventually } from "../support/client.mjs";

const ROUTES = JSON.stringify([{ method: "POST", path: "/v1/ai/**", meter: "ai_tokens", cost: "reported" }]);
const fx = gatewayWithOrigin({ ROUTES }, async ({ api }) => {
  await api.plan("metered", {
    // `rows` keeps per-event audit rows too; the others are aggregated only.
    meters: [{ id: "storage_bytes", unit: "bytes", aggregation: "latest" }, { id: "seats", aggregation: "max" }, { id: "rows", audit: true }],
    limits: [
      { meter: "requests", limit: 1000, period: "month" },
      { meter: "rows", limit: 100, period: "day", mode: "hard" },
      { meter: "ai_tokens", limit: 1000, period: "month", mode: "soft", overage_price: { per_units: 100, cents: 7 } },
      { meter: "storage_bytes", limit: 10_000, period: "month", mode: "soft" },
      { meter: "seats", limit: 5, period: "month", mode: "hard" },
    ],
    // Strict decisions: this file follows the ledger request by request (leases have their own
    // ledger checks in lease.test.mjs and the properties).
    lease: false,
  });
});

const newOrg = (plan = "metered") => fx.api.newOrg(plan, { prefix: "led" });
const ledger = (sql, ...p) => ledgerQuery(fx.gw.persistTo, sql, ...p);
async function ledgerTotal(org, meter) {
  const [r] = await ledger("SELECT COALESCE(SUM(events), 0) AS n, COALESCE(SUM(quantity), 0) AS q FROM usage_hourly WHERE org_id = ? AND meter = ?", org, meter);
  const [d] = await ledger("SELECT COALESCE(SUM(events), 0) AS n, COALESCE(SUM(quantity), 0) AS q FROM usage_daily WHERE org_id = ? AND meter = ?", org, meter);
  assert.deepEqual([d.n, d.q], [r.n, r.q], "the daily tier agrees with the hourly tier");
  return { events: r.n, quantity: r.q };
}
async function drain(org) {
  // Flush until nothing is pending (an alarm may hold the ledger for a moment: 409, retry).
  for (let i = 0; i < 100; i++) {
    const r = await fx.api.admin("POST", `/orgs/${org}/flush`);
    if (r.status === 200 && r.json.pending === 0) return r.json;
    await new Promise((res) => setTimeout(res, 200));
  }
  throw new Error(`outbox of ${org} did not drain`);
}


test("usage events are idempotent: accepted, duplicate, rejected; each reaches the ledger once", async () => {
  const o = await newOrg();
  const post = (body) => fx.api.call("POST", "/_quota/v1/events", { key: o.key, body });
  const first = await post({ events: [
    { id: "ev-1", meter: "rows", quantity: 40, metadata: { job: "import-7" } },
    { id: "ev-2", meter: "rows", quantity: 50, timestamp: new Date(Date.now() - 3_600_000).toISOString() },
    { id: "ev-3", meter: "nope", quantity: 1 },
  ] });
  assert.equal(first.status, 200);
  assert.deepEqual(first.json.results, [
    { id: "ev-1", status: "accepted" },
    { id: "ev-2", status: "accepted" },
    { id: "ev-3", status: "rejected", reason: "unknown meter 'nope'" },
  ]);
  const replay = await post({ events: [{ id: "ev-1", meter: "rows", quantity: 40 }, { id: "ev-4", meter: "rows", quantity: 20 }], enforce: true });
  assert.deepEqual(replay.json.results, [
    { id: "ev-1", status: "duplicate", original_status: "accepted" },
    { id: "ev-4", status: "rejected", reason: "would exceed the hard limit rows-day (90 used of 100)" },
  ]);
  // Without enforce, usage that happened is recorded even past a hard limit.
  const over = await post({ events: [{ id: "ev-5", meter: "rows", quantity: 20 }] });
  assert.equal(over.json.results[0].status, "accepted");
  assert.equal(await fx.api.used(o.id, "rows-day"), 110);
  const flushed = await drain(o.id);
  assert.equal(flushed.pending, 0);
  assert.deepEqual(await ledgerTotal(o.id, "rows"), { events: 3, quantity: 110 });
  // The audit meter's per-event rows, with metadata; they are not counted a second time.
  const [ev1] = await ledger("SELECT source, metadata, day, rolled FROM usage_events WHERE org_id = ? AND event_id = 'ev-1'", o.id);
  assert.deepEqual([ev1.source, JSON.parse(ev1.metadata).job, ev1.day, ev1.rolled], ["event", "import-7", new Date().toISOString().slice(0, 10), 0]);
  const [audit] = await ledger("SELECT COUNT(*) AS n FROM usage_events WHERE org_id = ?", o.id);
  assert.equal(audit.n, 3);
  // ev-2 happened an hour ago: its own hourly bucket.
  const [hours] = await ledger("SELECT COUNT(*) AS n FROM usage_hourly WHERE org_id = ? AND meter = 'rows'", o.id);
  assert.equal(hours.n, 2);
  // A replay after the flush is still a duplicate, and the ledger still holds it once.
  assert.equal((await post({ events: [{ id: "ev-2", meter: "rows", quantity: 50 }] })).json.results[0].status, "duplicate");
  await drain(o.id);
  assert.deepEqual(await ledgerTotal(o.id, "rows"), { events: 3, quantity: 110 });
});

test("proxied requests reach the ledger at once, aggregated; released ones never; nothing per request is stored", async () => {
  const o = await newOrg();
  for (let i = 0; i < 3; i++) assert.equal((await fx.api.call("GET", "/ok", { key: o.key })).status, 200);
  assert.equal((await fx.api.call("GET", "/fail?status=500", { key: o.key })).status, 500);
  assert.equal((await fx.api.call("POST", "/v1/ai/chat?usage=ai_tokens:250", { key: o.key })).status, 200);
  // A replayed request on a reported-cost route: its usage report counts once too.
  for (let i = 0; i < 2; i++) {
    const r = await fx.api.call("POST", "/v1/ai/chat?usage=ai_tokens:40", { key: o.key, headers: { "idempotency-key": "rep-1" } });
    assert.equal(r.status, 200);
  }
  await eventually(async () => (await fx.api.used(o.id, "requests-month")) === 3);
  // No release window in front of the ledger: a forced flush right away takes everything.
  await drain(o.id);
  assert.deepEqual(await ledgerTotal(o.id, "requests"), { events: 3, quantity: 3 });
  assert.deepEqual(await ledgerTotal(o.id, "ai_tokens"), { events: 2, quantity: 290 });
  assert.equal(await fx.api.used(o.id, "ai_tokens-month"), 290, "the counter agrees with the ledger");
  const [rows] = await ledger("SELECT COUNT(*) AS n FROM usage_events WHERE org_id = ?", o.id);
  assert.equal(rows.n, 0, "no per-event rows for meters without audit");
  const [buckets] = await ledger("SELECT COUNT(*) AS n FROM usage_hourly WHERE org_id = ?", o.id);
  assert.equal(buckets.n, 2, "one bucket per meter and hour");
  const state = await fx.api.state(o.id);
  assert.deepEqual([state.open_reservations, state.outbox_pending, state.ledger_pending], [0, 0, 0]);
  // A release after its usage was flushed is a negative delta: the ledger nets out.
  const slow = fx.api.call("GET", "/slow?delay=1500&status=503", { key: o.key });
  await eventually(async () => (await fx.api.used(o.id, "requests-month")) === 4);
  await drain(o.id);
  assert.deepEqual(await ledgerTotal(o.id, "requests"), { events: 4, quantity: 4 });
  assert.equal((await slow).status, 503);
  await eventually(async () => (await fx.api.used(o.id, "requests-month")) === 3);
  await drain(o.id);
  assert.deepEqual(await ledgerTotal(o.id, "requests"), { events: 3, quantity: 3 });
});

test("a storm of 500 replays of the same idempotency keys counts each key once", async () => {
  const o = await newOrg();
  const keys = Array.from({ length: 10 }, (_, i) => `storm-${i}`);
  const statuses = await Promise.all(
    Array.from({ length: 500 }, (_, i) =>
      fx.api.call("POST", "/_quota/v1/events", { key: o.key, body: { events: [{ id: keys[i % 10], meter: "ai_tokens", quantity: 7 }] } })
        .then((r) => r.json.results[0].status),
    ),
  );
  const count = (s) => statuses.filter((x) => x === s).length;
  assert.deepEqual([count("accepted"), count("duplicate")], [10, 490]);
  // The same storm through the proxy, with Idempotency-Key headers.
  const proxied = await Promise.all(
    Array.from({ length: 500 }, (_, i) =>
      fetch(`${fx.gw.url}/thing`, { headers: { "x-api-key": o.key, "idempotency-key": `px-${i % 10}` } }).then(async (r) => {
        await r.arrayBuffer();
        return [r.status, r.headers.get("idempotent-replayed")];
      }),
    ),
  );
  // Per key: one first request; while it is in flight the others are 409s (never forwarded),
  // after it they are replays (forwarded, flagged, not counted).
  const first = proxied.filter(([s, rep]) => s === 200 && rep === null).length;
  const replays = proxied.filter(([s, rep]) => s === 200 && rep === "true").length;
  const busy = proxied.filter(([s]) => s === 409).length;
  assert.deepEqual([first, replays + busy], [10, 490], JSON.stringify(proxied));
  assert.equal(await fx.api.used(o.id, "ai_tokens-month"), 70);
  assert.equal(await fx.api.used(o.id, "requests-month"), 10);
  await drain(o.id);
  assert.deepEqual(await ledgerTotal(o.id, "ai_tokens"), { events: 10, quantity: 70 });
  assert.deepEqual(await ledgerTotal(o.id, "requests"), { events: 10, quantity: 10 });
});

test("D1 failing for a while: events stay queued, then arrive exactly once; flush throughput", async () => {
  const o = await newOrg();
  const lock = await lockLedger(fx.gw.persistTo);
  let acknowledged = 0;
  try {
    for (let b = 0; b < 20; b++) {
      const events = Array.from({ length: 100 }, (_, i) => ({ id: `d1f-${b}-${i}`, meter: "ai_tokens", quantity: 1 }));
      const r = await fx.api.call("POST", "/_quota/v1/events", { key: o.key, body: { events } });
      assert.equal(r.status, 200, "decisions do not need D1");
      acknowledged += r.json.results.filter((x) => x.status === "accepted").length;
    }
    await new Promise((r) => setTimeout(r, 2_500)); // the alarm tries and backs off meanwhile
    let failed;
    for (let i = 0; i < 20; i++) {
      failed = await fx.api.admin("POST", `/orgs/${o.id}/flush`);
      if (failed.status !== 409) break; // 409: the alarm's own attempt is in progress
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(failed.status, 503, failed.text);
    assert.equal(failed.json.type, "urn:quotagate:problem:ledger-unavailable");
    assert.equal(failed.json.pending, 2000, "nothing was lost or dropped");
  } finally {
    lock.release();
  }
  const t0 = Date.now();
  const done = await drain(o.id);
  const secs = (Date.now() - t0) / 1000;
  const total = await ledgerTotal(o.id, "ai_tokens");
  const [marks] = await ledger("SELECT COUNT(*) AS n FROM ledger_marks WHERE org_id = ?", o.id);
  console.log(`d1-fault: acknowledged=${acknowledged} in_ledger=${total.events} drain=${secs.toFixed(2)}s`);
  assert.deepEqual([acknowledged, total.events, total.quantity, done.pending, marks.n], [2000, 2000, 2000, 0, 1]);
  const [roll] = await ledger("SELECT SUM(quantity) AS q, SUM(events) AS e FROM usage_daily WHERE org_id = ? AND meter = 'ai_tokens'", o.id);
  assert.deepEqual([roll.q, roll.e], [2000, 2000], "the rollup counted each event once");
});

test("usage overview, status, summary and history", async () => {
  const o = await newOrg();
  const yesterday = new Date(Date.now() - 86_400_000).toISOString();
  await fx.api.call("POST", "/_quota/v1/events", { key: o.key, body: { events: [
    { id: "u1", meter: "ai_tokens", quantity: 900 },
    { id: "u2", meter: "ai_tokens", quantity: 300 },
    { id: "u3", meter: "storage_bytes", quantity: 12_000 },
    { id: "u4", meter: "storage_bytes", quantity: 8_000 },
    { id: "u5", meter: "seats", quantity: 4 },
    { id: "u6", meter: "seats", quantity: 2 },
    { id: "u7", meter: "rows", quantity: 5, timestamp: yesterday },
  ] } });
  const u = await fx.api.call("GET", "/_quota/v1/usage", { key: o.key });
  assert.equal(u.status, 200);
  const m = Object.fromEntries(u.json.meters.map((x) => [x.policy, x]));
  assert.deepEqual([m["ai_tokens-month"].used, m["ai_tokens-month"].overage, m["ai_tokens-month"].overage_cost_cents, m["ai_tokens-month"].level], [1200, 200, 14, "over"]);
  assert.deepEqual([m["storage_bytes-month"].used, m["storage_bytes-month"].unit], [8000, "bytes"], "latest: the last snapshot");
  assert.equal(m["seats-month"].used, 4, "max: the peak");
  assert.equal(u.json.total_overage_cost_cents, 14);
  assert.equal(u.json.org_id, o.id);
  assert.ok(u.json.period.start && u.json.period.end);
  assert.ok(u.json.alerts.some((a) => a.policy === "ai_tokens-month" && a.level === "over"));
  for (const f of ["meter", "unit", "period", "used", "limit", "remaining", "percentage", "level", "mode", "overage", "overage_cost_cents", "reset_at"]) {
    assert.ok(f in m["rows-day"], `meters[] has ${f}`);
  }
  const s = await fx.api.call("GET", "/_quota/v1/usage/status", { key: o.key });
  assert.deepEqual([s.json.status, s.json.plan], ["over_limit", "metered"]);
  await drain(o.id);
  const sum = await fx.api.call("GET", "/_quota/v1/usage/summary?days=7", { key: o.key });
  assert.equal(sum.status, 200);
  assert.deepEqual([sum.json.period_days, sum.json.total_events], [7, 7]);
  assert.deepEqual(sum.json.summary_by_type.ai_tokens.count, 2);
  assert.deepEqual(sum.json.summary_by_type.ai_tokens.total_quantity, 1200);
  const today = new Date().toISOString().slice(0, 10);
  const yday = yesterday.slice(0, 10);
  const h = await fx.api.call("GET", `/_quota/v1/usage/history?meter=rows&from=${yday}&to=${today}`, { key: o.key });
  assert.equal(h.status, 200);
  assert.deepEqual(h.json.days.map((d) => [d.date, d.quantity]), [[yday, 5], [today, 0]]);
  // Bad query input is a precise 400.
  for (const [q, detail] of [
    ["/usage/summary?days=0", "days: must be a whole number from 1 to 365 (got '0')"],
    ["/usage/summary?days=366", "days: must be a whole number from 1 to 365 (got '366')"],
    ["/usage/summary?days=ten", "days: must be a whole number from 1 to 365 (got 'ten')"],
    [`/usage/history?meter=rows&from=2026-13-01&to=${today}`, "from: '2026-13-01' is not a valid date in the form YYYY-MM-DD"],
    [`/usage/history?meter=rows&from=${today}&to=${yday}`, `to: ${yday} is before from (${today})`],
    [`/usage/history?meter=nope&from=${yday}&to=${today}`, "meter: unknown meter 'nope'"],
    [`/usage/history?from=${yday}&to=${today}`, "meter: is required"],
  ]) {
    const r = await fx.api.call("GET", `/_quota/v1${q}`, { key: o.key });
    assert.equal(r.status, 400, q);
    assert.equal(r.json.detail, detail);
  }
});

test("reconciliation: zero drift after a clean run; injected drift is reported and repaired", async () => {
  const o = await newOrg();
  await fx.api.call("POST", "/_quota/v1/events", { key: o.key, body: { events: [
    { id: "r1", meter: "ai_tokens", quantity: 30 }, { id: "r2", meter: "ai_tokens", quantity: 12 }, { id: "r3", meter: "rows", quantity: 9 },
  ] } });
  // Some flushed, some still in the DO's buckets: reconciliation flushes first, then compares.
  await drain(o.id);
  await fx.api.call("POST", "/_quota/v1/events", { key: o.key, body: { events: [{ id: "r4", meter: "ai_tokens", quantity: 8 }] } });
  const clean = await fx.api.admin("GET", `/orgs/${o.id}/reconcile`);
  assert.equal(clean.status, 200);
  assert.equal(clean.json.total_drift, 0, JSON.stringify(clean.json.limits));
  const ai = clean.json.limits.find((l) => l.policy === "ai_tokens-month");
  assert.deepEqual([ai.counter, ai.ledger, ai.drift], [50, 50, 0]);
  await drain(o.id);
  // Inject drift: the ledger loses 12 units behind the gateway's back.
  const lock = await lockLedger(fx.gw.persistTo);
  lock.exec(`UPDATE usage_hourly SET quantity = quantity - 12 WHERE org_id = '${o.id}' AND meter = 'ai_tokens'`);
  lock.release();
  const drifted = await fx.api.admin("GET", `/orgs/${o.id}/reconcile`);
  const d = drifted.json.limits.find((l) => l.policy === "ai_tokens-month");
  assert.deepEqual([drifted.json.total_drift, d.counter, d.expected, d.drift], [12, 50, 38, 12]);
  const repaired = await fx.api.admin("POST", `/orgs/${o.id}/reconcile`);
  assert.equal(repaired.json.limits.find((l) => l.policy === "ai_tokens-month").repaired, true);
  assert.equal(await fx.api.used(o.id, "ai_tokens-month"), 38, "the ledger is the truth");
  assert.equal((await fx.api.admin("GET", `/orgs/${o.id}/reconcile`)).json.total_drift, 0);
  // A reset is recorded, and reconciliation counts from it: still no drift.
  assert.equal((await fx.api.admin("POST", `/orgs/${o.id}/reset`, { meter: "ai_tokens" })).status, 200);
  assert.equal((await fx.api.admin("GET", `/orgs/${o.id}/reconcile`)).json.total_drift, 0);
  const [reset] = await ledger("SELECT meter FROM counter_resets WHERE org_id = ?", o.id);
  assert.equal(reset.meter, "ai_tokens");
});

test("the billing export matches the ledger, in JSON and RFC 4180 CSV", async () => {
  const a = await newOrg();
  const b = await newOrg();
  await fx.api.call("POST", "/_quota/v1/events", { key: a.key, body: { events: [{ id: "x1", meter: "ai_tokens", quantity: 1500 }] } });
  await fx.api.call("POST", "/_quota/v1/events", { key: b.key, body: { events: [{ id: "x1", meter: "ai_tokens", quantity: 400 }, { id: "x2", meter: "rows", quantity: 3 }] } });
  await drain(a.id);
  await drain(b.id);
  const today = new Date().toISOString().slice(0, 10);
  const r = await fx.api.admin("GET", `/export?from=${today}&to=${today}&format=json`);
  assert.equal(r.status, 200);
  const rows = await ledger(
    "SELECT org_id, meter, SUM(quantity) AS q, SUM(events) AS n FROM usage_hourly WHERE start >= ? AND org_id IN (?, ?) GROUP BY org_id, meter ORDER BY org_id, meter",
    Date.parse(`${today}T00:00:00Z`), a.id, b.id,
  );
  const exported = r.json.rows.filter((x) => [a.id, b.id].includes(x.org_id)).map((x) => [x.org_id, x.meter, x.quantity, x.events]);
  assert.deepEqual(exported, rows.map((x) => [x.org_id, x.meter, x.q, x.n]), "export totals equal the ledger's");
  const aRow = r.json.rows.find((x) => x.org_id === a.id && x.meter === "ai_tokens");
  assert.deepEqual([aRow.overage, aRow.overage_cost_cents, aRow.plan], [500, 35, "metered"]);
  const csv = await fx.api.admin("GET", `/export?from=${today}&to=${today}&format=csv`);
  assert.equal(csv.headers.get("content-type"), "text/csv; charset=utf-8");
  const lines = csv.text.split("\r\n");
  assert.equal(lines[0], "org_id,plan,meter,quantity,events,overage,overage_cost_cents");
  assert.ok(lines.includes(`${a.id},metered,ai_tokens,1500,1,500,35`), csv.text);
  assert.equal(lines.at(-1), "", "every record ends with CRLF");
  for (const [q, detail] of [
    [`from=${today}`, "to: is required (YYYY-MM-DD)"],
    [`from=${today}&to=${today}&format=xml`, "format: must be json or csv (got 'xml')"],
    ["from=2026-02-30&to=2026-03-01", "from: '2026-02-30' is not a valid date in the form YYYY-MM-DD"],
  ]) {
    const bad = await fx.api.admin("GET", `/export?${q}`);
    assert.equal(bad.status, 400, q);
    assert.equal(bad.json.detail, detail);
  }
});

test("counts stop at 2^53 − 1: more is a 422 that counts nothing; ledger totals past it read back, capped", async () => {
  const MAX = 9_007_199_254_740_991;
  const o = await newOrg();
  const post = (id, quantity) => fx.api.call("POST", "/_quota/v1/events", { key: o.key, body: { events: [{ id, meter: "ai_tokens", quantity }] } });
  // ai_tokens is a soft limit: nothing refuses it but the ceiling.
  assert.equal((await post("big-1", MAX - 1)).json.results[0].status, "accepted");
  const over = await post("big-2", 2);
  // The hour's ledger bucket is checked first (it bounds a meter with no limit too).
  assert.deepEqual([over.json.results[0].status, over.json.results[0].reason], ["rejected", `'ai_tokens (its ledger bucket for this hour)' would pass ${MAX}, the largest count the gateway keeps`]);
  // Sent as written: `2.0` is the whole number 2 (JSON.stringify would drop the fraction).
  const raw = '{"meter": "ai_tokens", "quantity": 2.0, "reserve": true}';
  const check = await fx.api.call("POST", "/_quota/v1/check", { key: o.key, raw, headers: { "content-type": "application/json" } });
  assert.equal(check.status, 422, check.text);
  assert.equal(check.json.type, "urn:quotagate:problem:count-ceiling");
  assert.equal(await fx.api.used(o.id, "ai_tokens-month"), MAX - 1, "nothing was counted");
  // A reset starts the counter over; the day's ledger row now holds more than 2^53 − 1.
  await drain(o.id);
  assert.equal((await fx.api.admin("POST", `/orgs/${o.id}/reset`, { meter: "ai_tokens" })).status, 200);
  assert.equal((await post("big-3", 5)).json.results[0].status, "accepted");
  await drain(o.id);
  const [row] = await ledger("SELECT CAST(SUM(quantity) AS TEXT) AS q FROM usage_daily WHERE org_id = ? AND meter = 'ai_tokens'", o.id);
  assert.equal(row.q, String(BigInt(MAX) + 4n), "the ledger keeps the exact sum");
  const summary = await fx.api.call("GET", "/_quota/v1/usage/summary?days=1", { key: o.key });
  assert.equal(summary.status, 200, summary.text);
  assert.equal(summary.json.summary_by_type.ai_tokens.total_quantity, MAX, "read back at most 2^53 − 1");
  const today = new Date().toISOString().slice(0, 10);
  const history = await fx.api.call("GET", `/_quota/v1/usage/history?meter=ai_tokens&from=${today}&to=${today}`, { key: o.key });
  assert.equal(history.status, 200, history.text);
  assert.equal(history.json.days[0].quantity, MAX);
  assert.equal((await fx.api.admin("GET", `/export?from=${today}&to=${today}`)).status, 200);
  assert.equal((await fx.api.admin("GET", `/orgs/${o.id}/reconcile`)).status, 200);
});
