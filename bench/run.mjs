// `make bench`: every contender in a faithful local runtime (tests/support/host.mjs: the deployable bundle
// in workerd through the Miniflare API on a direct socket; no wrangler dev proxy, no inspector),
// the same wrk load at each in interleaved rounds at 32 connections and at 1, then one sustained
// run on one hot org in 10 s slices, the work the org's DO does per request, D1 growth, cold
// start, wasm size, a secondary table under `wrangler dev` (what `make dev` users feel), the
// ledger's flush figures and the native decision cost. Writes bench/results.json and
// bench/RESULTS.md (through bench/render.mjs).
//
// Knobs (environment): BENCH_DURATION (s, 4), BENCH_WARMUP (s, 1), BENCH_CONNECTIONS (32),
// BENCH_ROUNDS (3), BENCH_SUSTAIN (s, 300; 0 skips), BENCH_OUT (directory, bench/), BENCH_ONLY
// (comma-separated contender ids; a and b always run), BENCH_BUNDLE (another quotagate bundle's
// entry module, e.g. an older build's `wrangler deploy --dry-run` output, to measure it instead).
import { spawn, spawnSync, execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import zlib from "node:zlib";
import { startGateway, startWorker, freePort, ledgerQuery, lockLedger, ROOT } from "../tests/support/gateway.mjs";
import { startWranglerDev } from "../tests/support/dev.mjs";
import { client, ADMIN_TOKEN, KEY_SECRET, ORIGIN_SECRET } from "../tests/support/client.mjs";
import { quotagateBundle, bundleOf, entryModule } from "../tests/support/bundle.mjs";
import { render } from "./render.mjs";
import { profileWhile } from "./profile.mjs";
import { crossings } from "./crossings.mjs";

const DURATION = Number(process.env.BENCH_DURATION ?? 4);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 1);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 32);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const SUSTAIN = Number(process.env.BENCH_SUSTAIN ?? 300);
const SLICE = 10;
const OUT = path.resolve(process.env.BENCH_OUT ?? path.join(ROOT, "bench"));
const ONLY = process.env.BENCH_ONLY ? new Set(process.env.BENCH_ONLY.split(",")) : null;
const LOG_LEVEL = process.env.BENCH_LOG_LEVEL ?? "warn";
const LUA = path.join(ROOT, "bench/lua/load.lua");
const ROUTES = '[{"method": "POST", "path": "/v1/ai/**", "meter": "ai_tokens", "cost": "reported"}]';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const t0run = performance.now();
// Each line says how far into the run it is, so the budget can be read phase by phase.
const log = (...a) => console.log(`[bench ${Math.round((performance.now() - t0run) / 1000)} s]`, ...a);

const children = [];
function run(cmd, args, opts = {}) {
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], detached: true, ...opts });
  let out = "";
  child.stdout.on("data", (d) => (out = (out + d).slice(-65536)));
  child.stderr.on("data", (d) => (out = (out + d).slice(-65536)));
  children.push(child);
  return { child, logs: () => out };
}
// Gateways started through the test harness are process groups of their own, killed alike.
const gateways = [];
function killAll() {
  for (const g of gateways) {
    try {
      process.kill(-g.pid, "SIGKILL");
    } catch {}
  }
  for (const c of children) {
    try {
      process.kill(-c.pid, "SIGKILL");
    } catch {}
  }
}
process.on("exit", killAll);
process.on("SIGINT", () => process.exit(130));
process.on("SIGTERM", () => process.exit(143));

async function waitFor(url, what) {
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      const r = await fetch(url);
      if (r.status === 200 && (await r.text()) !== "starting") return;
    } catch {}
    if (Date.now() > deadline) throw new Error(`${what} did not come up at ${url}`);
    await sleep(200);
  }
}

// ---- CPU accounting: utime + stime of a process group, from /proc (clock ticks → ms).
const TICK_MS = 1000 / Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim() || 100);
function groupCpu(pgid) {
  const byName = {};
  for (const pid of fs.readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    let stat;
    try {
      stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    } catch {
      continue;
    }
    const close = stat.lastIndexOf(")");
    const comm = stat.slice(stat.indexOf("(") + 1, close);
    const f = stat.slice(close + 2).split(" ");
    // Fields after the name: state(0) ppid(1) pgrp(2) ... utime(11) stime(12).
    if (Number(f[2]) !== pgid) continue;
    const name = /workerd/.test(comm) ? "workerd" : /redis/.test(comm) ? "redis" : "node";
    byName[name] = (byName[name] ?? 0) + (Number(f[11]) + Number(f[12])) * TICK_MS;
  }
  return byName;
}

// ---- load
function wrk(url, { keysFile, method = "GET", path: p = "/v1/things", seconds, connections = CONNECTIONS, countHeader }) {
  const env = { ...process.env, BENCH_METHOD: method, BENCH_PATH: p };
  if (keysFile) env.BENCH_KEYS = keysFile;
  if (countHeader) env.BENCH_COUNT_HEADER = countHeader;
  const out = execFileSync("wrk", ["-t1", `-c${connections}`, `-d${seconds}s`, "--timeout", "10s", "-s", LUA, url], {
    env,
    maxBuffer: 16 * 1024 * 1024,
  }).toString();
  const line = out.split("\n").find((l) => l.startsWith("BENCH_JSON "));
  if (!line) throw new Error(`wrk printed no result:\n${out}`);
  const r = JSON.parse(line.slice("BENCH_JSON ".length));
  const secs = r.duration_us / 1e6;
  return {
    rps: r.requests / secs,
    requests: r.requests,
    counted: r.counted,
    non_2xx: r.errors.status,
    socket_errors: r.errors.connect + r.errors.read + r.errors.write + r.errors.timeout,
    p50_ms: r.latency_us.p50 / 1000,
    p99_ms: r.latency_us.p99 / 1000,
    p999_ms: r.latency_us.p999 / 1000,
    max_ms: r.latency_us.max / 1000,
  };
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function machine() {
  const v = (cmd, args) => {
    try {
      return execFileSync(cmd, args, { stdio: ["ignore", "pipe", "pipe"] }).toString().trim().split("\n")[0];
    } catch {
      return "unknown";
    }
  };
  const pkg = (name) => JSON.parse(fs.readFileSync(path.join(ROOT, "node_modules", name, "package.json"), "utf8")).version;
  return {
    cpu: os.cpus()[0]?.model ?? "unknown",
    cores: os.cpus().length,
    memory_gib: Math.round(os.totalmem() / 2 ** 30),
    kernel: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    wrangler: pkg("wrangler"),
    workerd: pkg("workerd"),
    rustc: v("rustc", ["-V"]),
    // `wrk -v` prints its version and exits 1.
    wrk: (spawnSync("wrk", ["-v"], { encoding: "utf8" }).stdout ?? "").split("\n")[0].replace(/ \[.*$/, "").trim() || "wrk",
    redis: v("redis-server", ["--version"]),
    commit: v("git", ["-C", ROOT, "rev-parse", "--short", "HEAD"]),
    date: new Date().toISOString(),
  };
}

// ---- quotagate provisioning
async function provision(api) {
  const huge = 1_000_000_000_000;
  await api.plan("bench-quota", { limits: [{ meter: "requests", limit: huge, period: "month", mode: "hard" }] });
  await api.plan("bench-burst", {
    limits: [
      { meter: "requests", limit: 1_000_000_000, period: "minute", mode: "hard" },
      { meter: "requests", limit: huge, period: "month", mode: "hard" },
    ],
  });
  await api.plan("bench-metered", {
    limits: [
      { meter: "requests", limit: huge, period: "month", mode: "hard" },
      { meter: "ai_tokens", limit: huge, period: "month", mode: "soft", overage_price: { per_units: 1000, cents: 1 } },
    ],
  });
  const keyOf = async (org, plan) => {
    await api.org(org, { plan });
    return (await api.key(org)).key;
  };
  // bench-quota names no `lease`: the default configuration, adaptive leases on. bench-strict
  // turns them off (every request asks the DO); bench-lease is a plan's own lease rules.
  await api.plan("bench-strict", { limits: [{ meter: "requests", limit: huge, period: "month", mode: "hard" }], lease: false });
  await api.plan("bench-lease", { limits: [{ meter: "requests", limit: huge, period: "month", mode: "hard" }], lease: { max_units: 5000, ttl_secs: 10 } });
  const keys = { hot: await keyOf("bench-hot", "bench-quota"), burst: await keyOf("bench-burst", "bench-burst") };
  keys.lease = await keyOf("bench-lease", "bench-lease");
  keys.strict = await keyOf("bench-strict-hot", "bench-strict");
  keys.metered = await keyOf("bench-metered", "bench-metered");
  keys.many = [];
  for (let i = 0; i < 100; i++) keys.many.push(await keyOf(`bench-org-${String(i).padStart(3, "0")}`, "bench-quota"));
  return keys;
}

function keyFile(name, keys) {
  const f = path.join(os.tmpdir(), `quotagate-bench-${process.pid}-${name}.keys`);
  fs.writeFileSync(f, keys.join("\n") + "\n");
  return f;
}

// ---- the ledger: one drain of usage queued while D1 was down, and the flush lag under steady
// traffic with the default LEDGER_FLUSH_SECS
async function ledgerFigures(start) {
  log("ledger: fresh gateway");
  const gw = await start();
  try {
    const api = client(gw.url);
    await api.plan("bench-ledger", { limits: [{ meter: "rows", limit: 1_000_000_000, period: "month" }] });
    const keyOf = async (org) => {
      await api.org(org, { plan: "bench-ledger" });
      return (await api.key(org)).key;
    };
    // 5,000 events are counted into the DO's buckets while D1 is locked, then one drain.
    const drainKey = await keyOf("bench-drain");
    const queued = 5000;
    const lock = await lockLedger(gw.persistTo);
    try {
      for (let b = 0; b < queued / 100; b++) {
        const events = Array.from({ length: 100 }, (_, i) => ({ id: `q-${b}-${i}`, meter: "rows", quantity: 1 }));
        const r = await api.call("POST", "/_quota/v1/events", { key: drainKey, body: { events } });
        if (r.status !== 200) throw new Error(`events: ${r.status} ${r.text}`);
      }
      await sleep(1500);
    } finally {
      lock.release();
    }
    const t0 = performance.now();
    let pending = null;
    for (let i = 0; i < 200; i++) {
      const r = await api.admin("POST", "/orgs/bench-drain/flush");
      if (r.status === 200 && r.json.pending === 0) {
        pending = 0;
        break;
      }
      await sleep(20);
    }
    const drainMs = performance.now() - t0;
    const [landed] = await ledgerQuery(gw.persistTo, "SELECT COALESCE(SUM(events), 0) AS n, COUNT(*) AS rows FROM usage_hourly WHERE org_id = 'bench-drain'");
    if (pending !== 0 || landed.n !== queued) throw new Error(`drain: pending=${pending} landed=${landed.n}`);
    // Lag: one event every 100 ms for 20 s; D1 is polled every 100 ms, and an event's lag is
    // the first poll that shows it minus the time it was acknowledged.
    const lagKey = await keyOf("bench-lag");
    const acked = [];
    const seen = [];
    let sending = true;
    const poll = (async () => {
      for (let i = 0; i < 600 && (sending || seen.at(-1)?.[1] < acked.length); i++) {
        const [row] = await ledgerQuery(gw.persistTo, "SELECT COALESCE(SUM(quantity), 0) AS q FROM usage_hourly WHERE org_id = 'bench-lag'");
        seen.push([Date.now(), row.q]);
        await sleep(100);
      }
    })();
    for (let b = 0; b < 200; b++) {
      const r = await api.call("POST", "/_quota/v1/events", { key: lagKey, body: { events: [{ id: `l-${b}`, meter: "rows", quantity: 1 }] } });
      if (r.status !== 200) throw new Error(`events: ${r.status} ${r.text}`);
      acked.push(Date.now());
      await sleep(100);
    }
    sending = false;
    await poll;
    const lags = acked.map((t, i) => seen.find(([, q]) => q >= i + 1)?.[0] - t).filter((x) => Number.isFinite(x));
    if (lags.length !== 200) throw new Error(`lag: only ${lags.length} of 200 events reached D1`);
    lags.sort((a, b) => a - b);
    const pct = (p) => lags[Math.min(lags.length - 1, Math.ceil((p / 100) * lags.length) - 1)];
    return {
      flush: { events: queued, ms: Math.round(drainMs), events_per_s: Math.round(queued / (drainMs / 1000)), d1_rows: landed.rows },
      lag_ms: { events: lags.length, p50: pct(50), p99: pct(99), max: lags.at(-1) },
    };
  } finally {
    await gw.stop();
  }
}

/** The bundle's wasm (raw and gzip -9) and JS glue (gzip -9): what `wrangler deploy` uploads. */
function wasmSize(script) {
  const dir = path.dirname(script);
  const wasm = fs.readFileSync(path.join(dir, fs.readdirSync(dir).find((f) => f.endsWith(".wasm"))));
  const js = fs.readFileSync(script);
  return {
    wasm_bytes: wasm.length,
    wasm_gzip_bytes: zlib.gzipSync(wasm, { level: 9 }).length,
    js_gzip_bytes: zlib.gzipSync(js, { level: 9 }).length,
  };
}

function criterion() {
  log("criterion: cargo bench --bench decision");
  execFileSync("cargo", ["bench", "--locked", "--bench", "decision", "--", "--warm-up-time", "1", "--measurement-time", "4"], {
    cwd: ROOT,
    stdio: ["ignore", "ignore", "inherit"],
  });
  const est = (id) => {
    const e = JSON.parse(fs.readFileSync(path.join(ROOT, "target/criterion", id, "new/estimates.json"), "utf8"));
    return { mean_ns: e.mean.point_estimate, low_ns: e.mean.confidence_interval.lower_bound, high_ns: e.mean.confidence_interval.upper_bound };
  };
  const decision = est("decision_reserve");
  const floor = est("floor_increment");
  return { decision, floor, ratio_to_floor: decision.mean_ns / floor.mean_ns, render_view: est("render_view"), key_verify: est("key_verify"), do_message_json: est("do_message_json") };
}

/** The org DO's work per proxied request, from `X-Quota-Debug-Work` (QUOTA_DEBUG_WORK=1). */
async function workPerRequest(url, key, n = 200) {
  const seen = [];
  for (let i = 0; i < n; i++) {
    const r = await fetch(`${url}/v1/things`, { headers: { "x-api-key": key } });
    await r.arrayBuffer();
    const w = r.headers.get("x-quota-debug-work");
    if (r.status !== 200) throw new Error(`work probe answered ${r.status}`);
    if (!w) return null; // a build without the debug header
    const m = /statements=(\d+), rows-written=(\d+)/.exec(w);
    seen.push([Number(m[1]), Number(m[2])]);
  }
  const mean = (k) => seen.reduce((t, x) => t + x[k], 0) / seen.length;
  return { requests: n, statements: mean(0), rows_written: mean(1), max_rows_written: Math.max(...seen.map((x) => x[1])) };
}

/**
 * The D1 bytes an org's ledger rows take: its rows in each ledger table times that table's
 * bytes per row (SQLite's dbstat: pages, with their free space, over cells, the table's
 * indexes included). The file's own size moves in whole pages and with the WAL, so it cannot
 * show a few rows.
 */
async function ledgerBytes(persistTo, org) {
  const tables = { usage_hourly: [], usage_daily: ["sqlite_autoindex_usage_daily_1"], usage_events: ["usage_events_org_meter_ts", "usage_events_unreported", "usage_events_stripe_batch", "sqlite_autoindex_usage_events_1"], ledger_marks: [] };
  let bytes = 0;
  const rows = {};
  for (const [t, indexes] of Object.entries(tables)) {
    const [{ n }] = await ledgerQuery(persistTo, `SELECT COUNT(*) AS n FROM ${t} WHERE org_id = ?`, org);
    const [all] = await ledgerQuery(persistTo, `SELECT COUNT(*) AS n FROM ${t}`);
    const names = [t, ...indexes].map((x) => `'${x}'`).join(", ");
    const [{ pg }] = await ledgerQuery(persistTo, `SELECT COALESCE(SUM(pgsize), 0) AS pg FROM dbstat WHERE name IN (${names})`);
    rows[t] = n;
    bytes += all.n ? (n * pg) / all.n : 0;
  }
  return { bytes: Math.round(bytes), rows };
}

/** One hot org under continuous load for `seconds`, measured in `SLICE`-second slices. */
async function sustained(gw, api, key, seconds) {
  const keysFile = keyFile("sustain", [key]);
  const slices = [];
  const org = "bench-hot";
  // Ledger rows of this org in D1: hourly and daily buckets, and per-event rows (none unless a
  // meter keeps an audit trail).
  const rows = async () => (await ledgerQuery(gw.persistTo,
    "SELECT (SELECT COUNT(*) FROM usage_hourly WHERE org_id = ?1) + (SELECT COUNT(*) FROM usage_daily WHERE org_id = ?1) + (SELECT COUNT(*) FROM usage_events WHERE org_id = ?1) AS n", org))[0].n;
  const flushes = async () => (await ledgerQuery(gw.persistTo, "SELECT COALESCE(MAX(seq), 0) AS n FROM ledger_marks WHERE org_id = ?", org))[0].n;
  const flushes0 = await flushes();
  const d1Rows0 = await rows();
  const d1Bytes0 = (await ledgerBytes(gw.persistTo, org)).bytes;
  let total = 0;
  for (let t = 0; t < seconds; t += SLICE) {
    const cpu0 = groupCpu(gw.pid);
    const r = wrk(gw.url, { keysFile, seconds: SLICE });
    const cpu1 = groupCpu(gw.pid);
    total += r.requests;
    // A pooled connection idle through a whole slice may have been closed by the server: once more.
    const state = await api.admin("GET", `/orgs/${org}`).catch(() => api.admin("GET", `/orgs/${org}`));
    const live = state.json?.state ?? {};
    const slice = {
      t_s: t + SLICE,
      rps: Math.round(r.rps),
      p99_ms: r.p99_ms,
      cpu_us_per_request: Math.round((((cpu1.workerd ?? 0) - (cpu0.workerd ?? 0)) * 1000) / Math.max(1, r.requests)),
      do_rows_live: (live.outbox_pending ?? 0) + (live.open_reservations ?? 0),
      ledger_pending: live.ledger_pending ?? 0,
      d1_rows: (await rows()) - d1Rows0,
      d1_batches: (await flushes()) - flushes0,
      non_2xx: r.non_2xx,
    };
    slices.push(slice);
    log(`sustained ${slice.t_s}s: ${slice.rps} req/s p99 ${slice.p99_ms.toFixed(1)} ms cpu ${slice.cpu_us_per_request} µs DO rows ${slice.do_rows_live} pending ${slice.ledger_pending} D1 rows ${slice.d1_rows} batches ${slice.d1_batches}`);
  }
  // Drain everything (no release window holds usage back), then measure D1's growth.
  await sleep(1500);
  for (let i = 0; i < 50; i++) {
    const f = await api.admin("POST", `/orgs/${org}/flush`);
    if (f.status === 200 && f.json.pending === 0) break;
    await sleep(200);
  }
  const d1Rows = (await rows()) - d1Rows0;
  const after = await ledgerBytes(gw.persistTo, org);
  const d1Bytes = after.bytes - d1Bytes0;
  const tail = slices.slice(Math.floor(slices.length / 2));
  return {
    seconds,
    requests: total,
    slices,
    steady: { rps: Math.round(median(tail.map((s) => s.rps))), p99_ms: median(tail.map((s) => s.p99_ms)), cpu_us_per_request: median(tail.map((s) => s.cpu_us_per_request)) },
    d1: { rows: d1Rows, bytes: d1Bytes, org_rows: after.rows, org_bytes: after.bytes, batches: (await flushes()) - flushes0,
          bytes_per_million_requests: Math.round((d1Bytes / Math.max(1, total)) * 1e6) },
  };
}

async function main() {
  for (const tool of ["wrk", "redis-server"]) {
    try {
      execFileSync("which", [tool], { stdio: "ignore" });
    } catch {
      throw new Error(`${tool} is missing: run \`make bench-setup\``);
    }
  }
  const started = performance.now();
  const results = {
    machine: machine(),
    settings: { duration_s: DURATION, warmup_s: WARMUP, connections: CONNECTIONS, rounds: ROUNDS, sustain_s: SUSTAIN, slice_s: SLICE, load: "wrk, 1 thread, closed loop", runtime: "Miniflare API, direct sockets, no inspector (tests/support/host.mjs)" },
  };
  log(JSON.stringify(results.machine));

  // The deployable bundles, built as `wrangler deploy` would.
  const bundles = path.join(os.tmpdir(), `quotagate-bench-bundles-${process.pid}`);
  const qgScript = process.env.BENCH_BUNDLE ? path.resolve(process.env.BENCH_BUNDLE) : entryModule(path.join(await quotagateBundle(), "worker"));
  // The profile reads Rust frames by name: the same bundle with the wasm as it was before its
  // function names were stripped (`make build` keeps that copy in target/), when there is one.
  const namedScript = (script) => {
    const named = path.join(ROOT, "target/index_bg.named.wasm");
    if (process.env.BENCH_BUNDLE || !fs.existsSync(named)) return script;
    const dir = path.join(bundles, "quotagate-named");
    fs.cpSync(path.dirname(script), dir, { recursive: true });
    const wasm = fs.readdirSync(dir).find((f) => f.endsWith(".wasm"));
    fs.copyFileSync(named, path.join(dir, wasm));
    return path.join(dir, path.basename(script));
  };
  const contenderScript = (dir) => bundleOf(path.join(ROOT, "bench/contenders", dir, "wrangler.toml"), path.join(bundles, dir));
  results.bundle = process.env.BENCH_BUNDLE ? process.env.BENCH_BUNDLE : "this checkout (wrangler deploy --dry-run)";

  // The origin, redis, and every contender, all on loopback.
  const originPort = await freePort();
  const origin = run(process.execPath, [path.join(ROOT, "bench/origin.mjs"), String(originPort)]);
  const ORIGIN_URL = `http://127.0.0.1:${originPort}`;
  await waitFor(`${ORIGIN_URL}/health`, "origin");
  const redisPort = await freePort();
  const redis = run("redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
  const limiterPort = await freePort();
  const limiter = run(process.execPath, [path.join(ROOT, "bench/contenders/redis-limiter/server.mjs"), String(limiterPort), ORIGIN_URL, String(redisPort)]);
  await waitFor(`http://127.0.0.1:${limiterPort}/_bench/health`, "redis limiter");
  const track = async (started) => {
    const g = await started;
    gateways.push(g);
    return g;
  };
  const health = "/_bench/health";
  log("starting the Workers");
  const passthrough = await track(startWorker({ name: "bench-passthrough", script: contenderScript("passthrough"), vars: { ORIGIN_URL }, health }));
  const passthroughLog = await track(startWorker({ name: "bench-passthrough-log", script: contenderScript("passthrough"), vars: { ORIGIN_URL, LOG_LINE: "1" }, health }));
  const doCounter = await track(startWorker({ name: "bench-do-counter", script: contenderScript("do-counter"), vars: { ORIGIN_URL }, durableObjects: { COUNTER: "Counter" }, health }));
  const ratelimit = await track(
    startWorker({ name: "bench-ratelimit", script: contenderScript("ratelimit"), vars: { ORIGIN_URL }, ratelimits: { LIMITER: { namespace_id: "1001", simple: { limit: 1_000_000_000, period: 60 } } }, health }),
  );
  const qgVars = { ORIGIN_URL, ROUTES };
  const quotagate = (vars = {}, extra = {}) =>
    track(startGateway({ script: qgScript, vars: { ...qgVars, ...vars }, logs: "warn", ...extra }));
  const gw = await quotagate();
  const api = client(gw.url);
  const keys = await provision(api);
  const hotKeys = keyFile("hot", [keys.hot]);
  // The same gateway with DECISION_LOG=refusals: the cost of one log line per decision, apart.
  const quiet = await quotagate({ DECISION_LOG: "refusals" });
  const quietApi = client(quiet.url);
  await quietApi.plan("bench-quota", { limits: [{ meter: "requests", limit: 1_000_000_000_000, period: "month", mode: "hard" }] });
  await quietApi.org("bench-hot", { plan: "bench-quota" });
  const quietKeys = keyFile("quiet", [(await quietApi.key("bench-hot")).key]);

  const contenders = [
    { id: "origin", name: "origin alone (no gateway)", url: ORIGIN_URL, pgid: origin.child.pid, keysFile: hotKeys },
    { id: "a", name: "(a) pass-through Worker", url: passthrough.url, pgid: passthrough.pid, keysFile: hotKeys },
    { id: "a+log", name: "(a) pass-through Worker, one log line per request", url: passthroughLog.url, pgid: passthroughLog.pid, keysFile: hotKeys },
    { id: "b", name: "(b) minimal DO counter Worker", url: doCounter.url, pgid: doCounter.pid, keysFile: hotKeys },
    { id: "c1", name: "(c) quotagate, one hot org, default config (adaptive leases)", url: gw.url, pgid: gw.pid, keysFile: hotKeys },
    { id: "c2", name: "(c) quotagate, 100 orgs, default config", url: gw.url, pgid: gw.pid, keysFile: keyFile("many", keys.many) },
    { id: "c1s", name: "(c) quotagate, one hot org, leases off (strict)", url: gw.url, pgid: gw.pid, keysFile: keyFile("strict", [keys.strict]) },
    { id: "c3", name: "(c) quotagate, burst limit + monthly quota", url: gw.url, pgid: gw.pid, keysFile: keyFile("burst", [keys.burst]) },
    { id: "c4", name: "(c) quotagate, post-response metering", url: gw.url, pgid: gw.pid, keysFile: keyFile("metered", [keys.metered]), method: "POST", path: "/v1/ai/chat" },
    { id: "c5", name: "(c) quotagate, one hot org, DECISION_LOG=refusals", url: quiet.url, pgid: quiet.pid, keysFile: quietKeys },
    { id: "c6", name: "(c) quotagate, one hot org, the plan's own lease rules (5,000 units, 10 s)", url: gw.url, pgid: gw.pid, keysFile: keyFile("lease", [keys.lease]) },
    { id: "d", name: "(d) Workers Rate Limiting binding", url: ratelimit.url, pgid: ratelimit.pid, keysFile: hotKeys },
    { id: "e", name: "(e) Node + rate-limiter-flexible + Redis", url: `http://127.0.0.1:${limiterPort}`, pgid: limiter.child.pid, extraPgid: redis.child.pid, keysFile: hotKeys },
    { id: "a@1", name: "(a) pass-through Worker, 1 connection", url: passthrough.url, pgid: passthrough.pid, keysFile: hotKeys, connections: 1 },
    { id: "b@1", name: "(b) minimal DO counter, 1 connection", url: doCounter.url, pgid: doCounter.pid, keysFile: hotKeys, connections: 1 },
    { id: "c1@1", name: "(c) quotagate, one hot org, default config, 1 connection", url: gw.url, pgid: gw.pid, keysFile: hotKeys, connections: 1 },
    { id: "c1s@1", name: "(c) quotagate, one hot org, strict, 1 connection", url: gw.url, pgid: gw.pid, keysFile: keyFile("strict1", [keys.strict]), connections: 1 },
    { id: "c6@1", name: "(c) quotagate, one hot org, lease mode, 1 connection", url: gw.url, pgid: gw.pid, keysFile: keyFile("lease1", [keys.lease]), connections: 1 },
  ].filter((c) => !ONLY || ONLY.has(c.id) || ["a", "b", "a@1", "b@1"].includes(c.id));
  // c6 and c6@1 share the lease org: c6@1's figures are of a single client of that org.

  // One request each first: every contender must forward with 200 before it is measured.
  for (const c of contenders) {
    const r = await fetch(`${c.url}${c.path ?? "/v1/things"}`, {
      method: c.method ?? "GET",
      headers: { "x-api-key": fs.readFileSync(c.keysFile, "utf8").split("\n")[0], "content-type": "application/json" },
      body: c.method === "POST" ? "{}" : undefined,
    });
    if (r.status !== 200) throw new Error(`${c.name} answered ${r.status}: ${await r.text()}`);
  }

  const runs = Object.fromEntries(contenders.map((c) => [c.id, []]));
  for (let round = 1; round <= ROUNDS; round++) {
    for (const c of contenders) {
      const opts = { keysFile: c.keysFile, method: c.method, path: c.path, connections: c.connections };
      wrk(c.url, { ...opts, seconds: WARMUP });
      const countedOrg = { c1: "bench-hot", c1s: "bench-strict-hot", c6: "bench-lease" }[c.id];
      const used0 = countedOrg ? await api.used(countedOrg, "requests-month") : 0;
      const cpu0 = { ...groupCpu(c.pgid), ...(c.extraPgid ? groupCpu(c.extraPgid) : {}) };
      const origin0 = groupCpu(origin.child.pid).node ?? 0;
      const r = wrk(c.url, { ...opts, seconds: DURATION });
      const cpu1 = { ...groupCpu(c.pgid), ...(c.extraPgid ? groupCpu(c.extraPgid) : {}) };
      const origin1 = groupCpu(origin.child.pid).node ?? 0;
      r.cpu_us_per_request = Object.fromEntries(
        Object.keys(cpu1).map((k) => [k, Math.round(((cpu1[k] - (cpu0[k] ?? 0)) * 1000) / Math.max(1, r.requests))]),
      );
      if (c.id !== "origin") r.cpu_us_per_request.origin = Math.round(((origin1 - origin0) * 1000) / Math.max(1, r.requests));
      if (countedOrg) {
        // Every admitted request is counted: wrk's total, plus at most the requests still in
        // flight when wrk stopped (one per connection). In lease mode the counter also holds
        // the isolate's open lease (pre-debited, up to max_units).
        await sleep(300);
        r.counted = (await api.used(countedOrg, "requests-month")) - used0;
      }
      runs[c.id].push(r);
      log(`round ${round} ${c.id}: ${r.rps.toFixed(0)} req/s p50 ${r.p50_ms.toFixed(2)} ms p99 ${r.p99_ms.toFixed(2)} ms p99.9 ${r.p999_ms.toFixed(2)} ms non-2xx ${r.non_2xx} cpu ${JSON.stringify(r.cpu_us_per_request)}`);
      await sleep(200);
    }
  }
  const pick = (xs, k) => median(xs.map((x) => x[k]));
  results.http = contenders.map((c) => {
    const xs = runs[c.id];
    const cpuKeys = Object.keys(xs[0].cpu_us_per_request);
    return {
      id: c.id,
      name: c.name,
      connections: c.connections ?? CONNECTIONS,
      rps: Math.round(pick(xs, "rps")),
      p50_ms: pick(xs, "p50_ms"),
      p99_ms: pick(xs, "p99_ms"),
      p999_ms: pick(xs, "p999_ms"),
      non_2xx: xs.reduce((s, x) => s + x.non_2xx, 0),
      socket_errors: xs.reduce((s, x) => s + x.socket_errors, 0),
      cpu_us_per_request: Object.fromEntries(cpuKeys.map((k) => [k, median(xs.map((x) => x.cpu_us_per_request[k] ?? 0))])),
      rounds: xs.map((x) => ({ rps: Math.round(x.rps), p50_ms: x.p50_ms, p99_ms: x.p99_ms, cpu_us_per_request: x.cpu_us_per_request })),
    };
  });
  if (runs.c1s) {
    // Strict: every admitted request is counted, exactly (plus those in flight when wrk stopped).
    results.quotagate_counted = runs.c1s.map((x) => ({ wrk_requests: x.requests, counted: x.counted, exact: x.counted >= x.requests && x.counted <= x.requests + CONNECTIONS }));
  }
  if (runs.c1) {
    // The default configuration: within one lease (the default max_units, 1,000) of what was served.
    results.default_counted = runs.c1.map((x) => ({ wrk_requests: x.requests, counted: x.counted, within_one_lease: Math.abs(x.counted - x.requests) <= 1000 + CONNECTIONS }));
  }
  if (runs.c6) {
    // In lease mode the counter holds what was served plus the unspent part of the isolate's
    // open lease (granted, counted, not yet spent or closed). Across a round the counter's
    // change therefore differs from what was served by at most one lease (max_units 5,000) plus
    // the requests in flight; exactness itself is tests/e2e/lease.test.mjs's.
    results.lease_counted = runs.c6.map((x) => ({
      wrk_requests: x.requests,
      counted: x.counted,
      within_one_lease: Math.abs(x.counted - x.requests) <= 5000 + CONNECTIONS,
    }));
  }
  // Every ratio by name: ratios["<contender>/<base>"] = {rps, p99, cpu} (cpu: workerd's, or the
  // server's for e).
  const by = Object.fromEntries(results.http.map((h) => [h.id, h]));
  const cpuOf = (h) => (h.cpu_us_per_request.workerd ?? 0) + (h.id === "e" ? (h.cpu_us_per_request.node ?? 0) + (h.cpu_us_per_request.redis ?? 0) : 0);
  results.ratios = {};
  const ratio = (x, y) => {
    if (!by[x] || !by[y]) return;
    results.ratios[`${x}/${y}`] = { rps: by[x].rps / by[y].rps, p99: by[x].p99_ms / by[y].p99_ms, p50: by[x].p50_ms / by[y].p50_ms, cpu: cpuOf(by[y]) ? cpuOf(by[x]) / cpuOf(by[y]) : null };
  };
  for (const h of results.http.filter((h) => !h.id.endsWith("@1") && h.id !== "origin")) {
    ratio(h.id, "a");
    ratio(h.id, "b");
    ratio(h.id, "e");
  }
  ratio("c1", "c5");
  ratio("a+log", "a");
  ratio("c6", "c1");
  ratio("c1", "c1s");
  ratio("c6", "c1s");
  ratio("c1s@1", "b@1");
  ratio("c1@1", "b@1");
  ratio("c6@1", "c1@1");
  ratio("b@1", "a@1");
  if (by["c1@1"] && by["b@1"]) results.single_client_p50_gap_ms = by["c1@1"].p50_ms - by["b@1"].p50_ms;
  for (const g of [passthrough, passthroughLog, doCounter, ratelimit, quiet]) await g.stop();

  // The org DO's work per proxied request, read from the DO itself; and cold start.
  log("work per request and cold start");
  const probe = await quotagate({ QUOTA_DEBUG_WORK: "1" });
  results.cold_start = { spawn_to_healthy_ms: Math.round(probe.startedMs) };
  {
    const papi = client(probe.url);
    // Strict plans: the DO's work per request it decides (a leased request costs it none).
    await papi.plan("bench-quota", { limits: [{ meter: "requests", limit: 1_000_000_000_000, period: "month", mode: "hard" }], lease: false });
    await papi.plan("bench-burst", {
      limits: [
        { meter: "requests", limit: 1_000_000_000, period: "minute", mode: "hard" },
        { meter: "requests", limit: 1_000_000_000_000, period: "month", mode: "hard" },
      ],
      lease: false,
    });
    await papi.org("probe-one", { plan: "bench-quota" });
    await papi.org("probe-two", { plan: "bench-burst" });
    const one = (await papi.key("probe-one")).key;
    const two = (await papi.key("probe-two")).key;
    const t0 = performance.now();
    const first = await fetch(`${probe.url}/v1/things`, { headers: { "x-api-key": one } });
    await first.arrayBuffer();
    results.cold_start.first_proxied_request_ms = Math.round(performance.now() - t0);
    results.work = { one_limit: await workPerRequest(probe.url, one), minute_and_month: await workPerRequest(probe.url, two) };
    log(`work: ${JSON.stringify(results.work)}`);
  }
  await probe.stop();

  // A refusal storm: one org over its monthly quota, its key looping on the 429 at CONNECTIONS
  // connections. The org's DO answers carry `X-Quota-Debug-Work` (QUOTA_DEBUG_WORK=1), an answer
  // from the isolate's memory does not: DO calls per second, and workerd CPU per refused request,
  // with the refusal memory (the default) and without it (REFUSAL_MEMORY_MS=0: every refusal asks
  // the DO, as before the memory existed). Interleaved rounds; the median is published.
  log("refusal storm");
  {
    const hosts = {};
    for (const [id, vars] of [["memory", {}], ["no_memory", { REFUSAL_MEMORY_MS: "0" }]]) {
      const host = await quotagate({ QUOTA_DEBUG_WORK: "1", ...vars });
      const h = client(host.url);
      await h.plan("bench-one", { limits: [{ meter: "requests", limit: 1, period: "month", mode: "hard" }] });
      await h.org("bench-storm", { plan: "bench-one" });
      const key = (await h.key("bench-storm")).key;
      const codes = [];
      for (let i = 0; i < 2; i++) codes.push((await h.call("GET", "/v1/things", { key })).status);
      if (codes.join() !== "200,429") throw new Error(`refusal storm ${id}: the org answered ${codes}`);
      hosts[id] = { host, keysFile: keyFile(`storm-${id}`, [key]), runs: [] };
    }
    for (let round = 1; round <= ROUNDS; round++) {
      for (const [id, x] of Object.entries(hosts)) {
        wrk(x.host.url, { keysFile: x.keysFile, seconds: WARMUP });
        const cpu0 = groupCpu(x.host.pid).workerd ?? 0;
        const r = wrk(x.host.url, { keysFile: x.keysFile, seconds: DURATION, countHeader: "x-quota-debug-work" });
        const cpu1 = groupCpu(x.host.pid).workerd ?? 0;
        const run = {
          rps: r.rps,
          refused: r.non_2xx,
          do_calls_per_s: r.counted / DURATION,
          cpu_us_per_refusal: ((cpu1 - cpu0) * 1000) / Math.max(1, r.requests),
          p50_ms: r.p50_ms,
          p99_ms: r.p99_ms,
        };
        if (r.non_2xx !== r.requests) throw new Error(`refusal storm ${id}: ${r.requests - r.non_2xx} of ${r.requests} admitted`);
        x.runs.push(run);
        log(`round ${round} storm ${id}: ${JSON.stringify(run)}`);
      }
    }
    results.refusal_storm = Object.fromEntries(
      Object.entries(hosts).map(([id, x]) => [
        id,
        {
          rps: Math.round(median(x.runs.map((r) => r.rps))),
          do_calls_per_s: median(x.runs.map((r) => r.do_calls_per_s)),
          cpu_us_per_refusal: Math.round(median(x.runs.map((r) => r.cpu_us_per_refusal))),
          p50_ms: median(x.runs.map((r) => r.p50_ms)),
          p99_ms: median(x.runs.map((r) => r.p99_ms)),
          rounds: x.runs.map((r) => ({ rps: Math.round(r.rps), do_calls_per_s: r.do_calls_per_s, cpu_us_per_refusal: Math.round(r.cpu_us_per_refusal) })),
        },
      ]),
    );
    for (const x of Object.values(hosts)) await x.host.stop();
  }

  // Where the time goes: a V8 CPU profile of quotagate's isolate (DECISION_LOG=refusals) and of
  // the DO counter, each on a host of its own with the inspector on (untimed runs).
  results.profile = {};
  for (const [id, start] of [
    ["b", (p) => startWorker({ name: "bench-do-counter", script: contenderScript("do-counter"), vars: { ORIGIN_URL }, durableObjects: { COUNTER: "Counter" }, health, inspectorPort: p })],
    ["c5", (p) => quotagate({ DECISION_LOG: "refusals" }, { inspectorPort: p, script: namedScript(qgScript) })],
    ["c1s", (p) => quotagate({ DECISION_LOG: "refusals" }, { inspectorPort: p, script: namedScript(qgScript) })],
  ]) {
    if (!contenders.some((c) => c.id === id)) continue;
    let host;
    try {
      host = await track(start(await freePort()));
      let keysFile = hotKeys;
      if (id === "c5" || id === "c1s") {
        const papi = client(host.url);
        // c5: the default configuration (leases); c1s: leases off, every request at the DO.
        const lease = id === "c1s" ? { lease: false } : {};
        await papi.plan("bench-quota", { limits: [{ meter: "requests", limit: 1_000_000_000_000, period: "month", mode: "hard" }], ...lease });
        await papi.org("bench-hot", { plan: "bench-quota" });
        keysFile = keyFile("profile", [(await papi.key("bench-hot")).key]);
      }
      const p = await profileWhile(host.inspector, async () => wrk(host.url, { keysFile, seconds: 4 }));
      results.profile[id] = { rps_while_profiled: Math.round(p.load.rps), total_ms: Math.round(p.total_ms), categories: p.categories, top: p.top.slice(0, 12) };
      log(`profile ${id}: ${JSON.stringify(p.categories)}`);
    } catch (e) {
      log(`profile ${id}: ${e.message}`);
      results.profile[id] = { error: e.message };
    } finally {
      await host?.stop();
    }
  }

  // wasm ↔ JS crossings per request on each path, counted (bench/crossings.mjs).
  try {
    results.crossings = await crossings();
    log(`crossings: ${JSON.stringify(Object.fromEntries(Object.entries(results.crossings).map(([k, v]) => [k, [v.wasm_to_js, v.js_to_wasm]])))}`);
  } catch (e) {
    log(`crossings: ${e.message}`);
    results.crossings = { error: e.message };
  }

  if (SUSTAIN > 0 && by.c1) {
    log(`sustained: ${SUSTAIN} s on one hot org`);
    results.sustained = await sustained(gw, api, keys.hot, SUSTAIN);
  }
  await gw.stop();

  // What `make dev` users feel: the DO counter and quotagate under wrangler dev, one round.
  log("wrangler dev: b and c1");
  {
    const devB = await track(startWranglerDev({ config: path.join(ROOT, "bench/contenders/do-counter/wrangler.toml"), health, logLevel: LOG_LEVEL, vars: { ORIGIN_URL } }));
    const devC = await track(startWranglerDev({ migrate: true, logLevel: LOG_LEVEL, vars: { ADMIN_TOKEN, KEY_SECRET, ORIGIN_SECRET, ORIGIN_URL } }));
    const dapi = client(devC.url);
    await dapi.plan("bench-quota", { limits: [{ meter: "requests", limit: 1_000_000_000_000, period: "month", mode: "hard" }] });
    await dapi.org("bench-hot", { plan: "bench-quota" });
    const devKeys = keyFile("dev", [(await dapi.key("bench-hot")).key]);
    const rb = (wrk(devB.url, { keysFile: devKeys, seconds: WARMUP }), wrk(devB.url, { keysFile: devKeys, seconds: DURATION }));
    const rc = (wrk(devC.url, { keysFile: devKeys, seconds: WARMUP }), wrk(devC.url, { keysFile: devKeys, seconds: DURATION }));
    results.wrangler_dev = {
      b: { rps: Math.round(rb.rps), p99_ms: rb.p99_ms, non_2xx: rb.non_2xx },
      c1: { rps: Math.round(rc.rps), p99_ms: rc.p99_ms, non_2xx: rc.non_2xx },
      ratio_c1_b: { rps: rc.rps / rb.rps, p99: rc.p99_ms / rb.p99_ms },
    };
    log(`wrangler dev: ${JSON.stringify(results.wrangler_dev)}`);
    await devB.stop();
    await devC.stop();
  }
  killAll();

  results.ledger = await ledgerFigures(() => quotagate({ ORIGIN_URL: "http://127.0.0.1:9" }));
  results.size = wasmSize(qgScript);
  results.criterion = criterion();
  results.elapsed_s = Math.round((performance.now() - started) / 1000);
  fs.mkdirSync(OUT, { recursive: true });
  fs.writeFileSync(path.join(OUT, "results.json"), JSON.stringify(results, null, 2) + "\n");
  render(OUT);
  log(`wrote ${path.join(OUT, "results.json")} and ${path.join(OUT, "RESULTS.md")} in ${results.elapsed_s} s`);
  fs.rmSync(bundles, { recursive: true, force: true });
  if (results.quotagate_counted?.some((q) => !q.exact)) {
    console.error(`[bench] quotagate's counter disagrees with the load: ${JSON.stringify(results.quotagate_counted)}`);
    process.exitCode = 1;
  }
  const bad = results.http.filter((h) => h.non_2xx > 0 || h.socket_errors > 0);
  if (bad.length) {
    console.error(`[bench] contenders with errors: ${bad.map((h) => `${h.id} non-2xx=${h.non_2xx} socket=${h.socket_errors}`).join(", ")}`);
    process.exitCode = 1;
  }
}

main().catch((e) => {
  console.error(e);
  killAll();
  process.exit(1);
});
