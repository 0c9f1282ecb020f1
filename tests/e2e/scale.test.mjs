// The ledger and the control plane at scale, end to end: usage of orgs spread over two ledger
// shards (two D1 databases) with every reader visiting both, and a plan change for 1,000 orgs
// that the PUT answers without calling any org's DO, which every org then adopts by itself
// within PLAN_REFRESH_SECS, an org whose D1 lookup failed included.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { execFileSync } from "node:child_process";
import { startGateway, tempDir, ROOT } from "../support/gateway.mjs";
import { createOrigin } from "../support/origin.mjs";
import { createStripe } from "../support/stripe.mjs";
import { client, ADMIN_TOKEN } from "../support/client.mjs";
import { WRANGLER_ENV } from "../support/bundle.mjs";

const CONFIG = path.join(ROOT, ".scale.wrangler.toml");
const REFRESH_SECS = 2;
const STRIPE_KEY = "sk_test_scale";
let gw, api, dir, origin, stripe;

/** Every D1 database file under the persistence directory (one per shard). */
async function databases() {
  const { DatabaseSync } = await import("node:sqlite");
  const d = path.join(dir, "v3/d1/miniflare-D1DatabaseObject");
  return fs.readdirSync(d).filter((f) => f.endsWith(".sqlite") && f !== "metadata.sqlite").map((f) => {
    const db = new DatabaseSync(path.join(d, f));
    db.exec("PRAGMA busy_timeout = 5000");
    return db;
  });
}

async function query(sql, ...params) {
  const out = [];
  for (const db of await databases()) {
    out.push(db.prepare(sql).all(...params));
    db.close();
  }
  return out;
}

before(async () => {
  // wrangler.toml plus a second ledger shard, LEDGER_1: the configuration the README describes,
  // whose migrations wrangler applies to both databases as a deploy would.
  const base = fs.readFileSync(path.join(ROOT, "wrangler.toml"), "utf8");
  fs.writeFileSync(CONFIG, `${base}
[[d1_databases]]
binding = "LEDGER_1"
database_name = "quotagate-ledger-1"
database_id = "00000000-0000-0000-0000-000000000001"
migrations_dir = "migrations"
`);
  dir = tempDir();
  for (const binding of ["LEDGER", "LEDGER_1"]) {
    execFileSync(path.join(ROOT, "node_modules/.bin/wrangler"), ["d1", "migrations", "apply", binding, "--local", "--persist-to", dir, "--config", CONFIG], {
      cwd: ROOT, env: WRANGLER_ENV, stdio: "pipe",
    });
  }
  origin = createOrigin();
  const port = await origin.listen();
  stripe = createStripe(STRIPE_KEY);
  const stripePort = await stripe.listen();
  gw = await startGateway({
    persistTo: dir,
    d1: { LEDGER_1: "00000000-0000-0000-0000-000000000001" },
    vars: { ORIGIN_URL: `http://127.0.0.1:${port}`, LEDGER_SHARDS: "2", PLAN_REFRESH_SECS: String(REFRESH_SECS),
      STRIPE_SECRET_KEY: STRIPE_KEY, STRIPE_API_BASE: `http://127.0.0.1:${stripePort}` },
  });
  api = client(gw.url);
});
after(async () => {
  await gw?.stop();
  await origin?.close();
  await stripe?.close();
  fs.rmSync(CONFIG, { force: true });
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test("two ledger shards: orgs spread over both, each org's usage in its own shard, readers and Stripe see all", async () => {
  await api.plan("sharded", { limits: [{ meter: "rows", limit: 1000, period: "month" }] });
  const orgs = Array.from({ length: 8 }, (_, i) => `sh-${i}`);
  for (const [i, id] of orgs.entries()) {
    await api.org(id, { plan: "sharded", stripe_customer_id: `cus_${id}` });
    const { key } = await api.key(id);
    const r = await api.call("POST", "/_quota/v1/events", { key, body: { events: [{ id: "e1", meter: "rows", quantity: i + 1 }] } });
    assert.equal(r.status, 200);
    assert.equal((await api.admin("POST", `/orgs/${id}/flush`)).json.pending, 0);
    const summary = await api.call("GET", "/_quota/v1/usage/summary?days=1", { key });
    assert.equal(summary.json.summary_by_type.rows.total_quantity, i + 1, "the summary reads the org's shard");
    assert.equal((await api.admin("GET", `/orgs/${id}/reconcile`)).json.total_drift, 0, "reconciliation reads it too");
  }
  const perShard = (await query("SELECT org_id FROM usage_hourly ORDER BY org_id")).map((rows) => rows.map((r) => r.org_id));
  assert.equal(perShard.length, 2);
  assert.ok(perShard.every((ids) => ids.length > 0), `both shards hold usage: ${JSON.stringify(perShard)}`);
  assert.deepEqual(perShard.flat().sort(), orgs, "each org's usage is in exactly one shard");
  const catalogue = (await query("SELECT id, shard FROM orgs WHERE id LIKE 'sh-%' ORDER BY id")).find((rows) => rows.length > 0);
  for (const { id, shard } of catalogue) {
    const holder = perShard.findIndex((ids) => ids.includes(id));
    assert.ok(holder >= 0 && (await api.state(id)).ledger_shard === shard, `${id} is on shard ${shard}`);
  }
  const today = new Date().toISOString().slice(0, 10);
  const exp = await api.admin("GET", `/export?from=${today}&to=${today}`);
  const exported = exp.json.rows.filter((r) => r.org_id.startsWith("sh-")).map((r) => [r.org_id, r.quantity]);
  assert.deepEqual(exported, orgs.map((id, i) => [id, i + 1]), "the export visits every shard");
  // Stripe reporting claims and sends on every shard, and marks each ledger row it reported.
  const sync = await api.admin("POST", "/stripe/sync");
  assert.deepEqual([sync.json.claimed, sync.json.delivered, sync.json.failed], [8, 8, 0], sync.text);
  assert.deepEqual(stripe.billed(), Object.fromEntries(orgs.map((id, i) => [`cus_${id}/rows`, i + 1])));
  const unreported = (await query("SELECT COUNT(*) AS n FROM usage_hourly WHERE stripe_reported_at IS NULL AND org_id LIKE 'sh-%'")).map((r) => r[0].n);
  assert.deepEqual(unreported, [0, 0], "every hourly row in both shards carries stripe_reported_at");
  const metrics = (await api.call("GET", "/_quota/admin/metrics", { token: ADMIN_TOKEN })).text;
  assert.match(metrics, /^quotagate_stripe_pending_batches 0$/m);
});

test("a plan change for 1,000 orgs: no fan-out, flat PUT, every org converges, a failed one too", async () => {
  const plan = (limit) => ({ limits: [{ meter: "requests", limit, period: "month", mode: "hard" }] });
  await api.plan("wide", plan(1));
  await api.plan("narrow", plan(1));
  const ids = Array.from({ length: 1000 }, (_, i) => `wide-${String(i).padStart(4, "0")}`);
  const keys = new Map();
  for (let i = 0; i < ids.length; i += 25) {
    await Promise.all(ids.slice(i, i + 25).map(async (id) => {
      await api.org(id, { plan: "wide" });
      keys.set(id, (await api.key(id)).key);
    }));
  }
  await api.org("narrow-0", { plan: "narrow" });
  // Three orgs' copies of the plan made fresh just before the change: an admin view adopts a
  // newer version once its copy is older than PLAN_REFRESH_SECS, and creating 1,000 orgs can take
  // longer than that.
  const watched = [ids[0], ids[499], ids[999]];
  for (const id of watched) assert.equal((await api.state(id)).plan_version, 1);
  const timed = async (id, limit) => {
    const t0 = performance.now();
    const r = await api.admin("PUT", `/plans/${id}`, plan(limit));
    return [r, performance.now() - t0];
  };
  const [one, msOne] = await timed("narrow", 5);
  const [wide, msWide] = await timed("wide", 5);
  console.log(`plan change: 1 org ${msOne.toFixed(1)} ms, 1,000 orgs ${msWide.toFixed(1)} ms`);
  assert.deepEqual([one.json.orgs, wide.json.orgs, wide.json.version, wide.json.adopted_within_secs], [1, 1000, 2, REFRESH_SECS]);
  // No org's DO was called: each still runs version 1 right after the PUT.
  for (const id of watched) assert.equal((await api.state(id)).plan_version, 1);
  // Within the bound, each org's next request runs on the new version (limit 5, not 1).
  await new Promise((r) => setTimeout(r, REFRESH_SECS * 1000 + 100));
  const failed = ids[0];
  // One org's D1 lookup fails (its D1 is locked while it asks): it decides on the plan it has.
  const catalogue = (await databases()).find((db) => {
    const n = db.prepare("SELECT COUNT(*) AS n FROM plans").get().n;
    if (n === 0) db.close();
    return n > 0;
  });
  catalogue.exec("BEGIN EXCLUSIVE");
  const pending = api.call("GET", "/x", { key: keys.get(failed) });
  await Promise.race([pending, new Promise((r) => setTimeout(r, 3_000))]);
  catalogue.exec("COMMIT");
  catalogue.close();
  assert.equal((await pending).status, 200, "served on the plan it had: decisions do not need D1");
  assert.equal((await api.state(failed)).plan_version, 1, "the failed lookup changed nothing");
  const statuses = [];
  for (let i = 1; i < ids.length; i += 50) {
    statuses.push(...(await Promise.all(ids.slice(i, i + 50).map(async (id) => {
      const k = keys.get(id);
      const a = (await api.call("GET", "/x", { key: k })).status;
      const b = (await api.call("GET", "/x", { key: k })).status;
      return `${a}/${b}`;
    }))));
  }
  const counts = statuses.reduce((m, s) => ({ ...m, [s]: (m[s] ?? 0) + 1 }), {});
  assert.deepEqual(counts, { "200/200": 999 }, "two requests each pass a limit of 5 (the old limit 1 would refuse the second)");
  const sample = await Promise.all([ids[1], ids[500], ids[999]].map((id) => api.state(id)));
  assert.ok(sample.every((s) => s.plan_version === 2));
  // The failed org converges by itself once D1 answers and its copy is old enough again.
  await new Promise((r) => setTimeout(r, REFRESH_SECS * 1000 + 100));
  assert.equal((await api.call("GET", "/x", { key: keys.get(failed) })).status, 200, "a second unit: the new limit");
  assert.equal((await api.state(failed)).plan_version, 2);
});
