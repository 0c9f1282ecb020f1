// Starts Workers in the faithful runtime for the tests and the benchmarks: the deployable bundle
// in workerd through the Miniflare API (tests/support/host.mjs), on a direct socket, with
// SQLite-backed Durable Objects and local D1 persisted in a directory of the caller's. Each host
// is a process group of its own (Node + workerd), so a test can SIGKILL it as a crash and restart
// on the same state, and a benchmark can read its CPU apart from the load generator's.
//
// Each test file runs in its own process with its own ports and state directories, so files run
// in parallel. `wrangler dev` is not used here: it is for `make dev` (and its smoke test).
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { ROOT, quotagateBundle, entryModule } from "./bundle.mjs";
import { ADMIN_TOKEN, KEY_SECRET, ORIGIN_SECRET } from "./client.mjs";

export { ROOT };

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

export function tempDir(prefix = "quotagate-e2e-") {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

// Output kept per process: the tail of a long load run, not all of it.
const LOG_CAP = 32 * 1024 * 1024;

/**
 * Spawns a server as a process group of its own (`detached`, so a signal reaches every process in
 * it) and waits until each of `healthUrls` answers 200, in order. Returns { pid, logs(), kill(), terminate() }:
 * `kill` is SIGKILL to the group, a crash; `terminate` is SIGTERM, then SIGKILL after 5 s.
 */
export async function spawnServer(command, args, { env, healthUrls, what, everyMs }) {
  const child = spawn(command, args, { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"], detached: true });
  let out = "";
  const keepTail = (d) => {
    out += d;
    if (out.length > LOG_CAP) out = out.slice(-LOG_CAP / 2);
  };
  child.stdout.on("data", keepTail);
  child.stderr.on("data", keepTail);
  const logs = () => out;
  for (const u of healthUrls) await waitHealthy(child, u, what, logs, everyMs);
  const signal = (sig) => {
    try {
      process.kill(-child.pid, sig);
    } catch {}
  };
  const exited = () => child.exitCode !== null || child.signalCode !== null;
  return {
    pid: child.pid,
    logs,
    async kill() {
      if (exited()) return;
      const done = new Promise((r) => child.once("exit", r));
      signal("SIGKILL");
      await done;
    },
    async terminate() {
      if (exited()) return;
      const done = new Promise((r) => child.once("exit", r));
      signal("SIGTERM");
      const t = setTimeout(() => signal("SIGKILL"), 5_000);
      await done;
      clearTimeout(t);
    },
  };
}

/**
 * Starts one Worker (and `replicas` more isolates of it) in the faithful host and waits until
 * `health` answers 200 on every socket. `script` is a bundle's entry module; `vars` are its
 * plain-text bindings; `durableObjects` maps a binding to a class; `d1` maps a binding to a
 * database id. `persistTo` reuses a state directory (kept on stop); otherwise a fresh one is made
 * and removed on stop. `logs: "all"` keeps every console line (the tests read decision lines);
 * the default keeps warnings and errors only (a benchmark host must not pay for printing).
 * Returns { url, urls, entry, pid, persistTo, startedMs, logs(), kill(), stop() }.
 */
export async function startWorker({
  name, script, vars = {}, durableObjects, d1, ratelimits, health, inspectorPort, persistTo: given, replicas = 0,
  compatibilityDate = "2026-10-01", logs = "warn", services, workers = [],
}) {
  const persistTo = given ?? tempDir("quotagate-host-");
  // A free port can be taken by another test file's host between our probe and workerd's bind
  // (files run two at a time): then the host says ERR_ADDRESS_IN_USE, and we start it again on
  // fresh ports.
  let port, replicaPorts, others, urls, server, startedMs;
  for (let attempt = 1; ; attempt++) {
    port = await freePort();
    replicaPorts = [];
    for (let i = 0; i < replicas; i++) replicaPorts.push(await freePort());
    others = [];
    for (const w of workers) others.push({ ...w, port: await freePort() });
    const spec = path.join(persistTo, "host.json");
    fs.writeFileSync(spec, JSON.stringify({
      name, script, port, persist: persistTo, vars, durableObjects, d1, ratelimits, inspectorPort, replicas: replicaPorts, compatibilityDate,
      services, workers: others,
    }));
    urls = [`http://127.0.0.1:${port}`, ...replicaPorts.map((p) => `http://127.0.0.1:${p}`)];
    const t0 = performance.now();
    try {
      // Polled often: the time to the first healthy answer is the benchmarks' cold-start figure
      // (the replicas come up with the first Worker, in the same workerd).
      server = await spawnServer(process.execPath, [path.join(ROOT, "tests/support/host.mjs"), spec], {
        env: { ...process.env, NO_COLOR: "1", HOST_LOGS: logs === "all" ? "all" : "" },
        healthUrls: urls.map((u) => `${u}${health}`), what: `host for ${name}`, everyMs: 50,
      });
    } catch (e) {
      if (attempt < 3 && /ERR_ADDRESS_IN_USE/.test(e.message)) continue;
      throw e;
    }
    startedMs = performance.now() - t0;
    break;
  }
  const url = urls[0];
  return {
    url,
    /** Every isolate's address: the first Worker's, then each replica's. */
    urls,
    /** The other Workers' addresses, by name. */
    workers: Object.fromEntries(others.map((w) => [w.name, `http://127.0.0.1:${w.port}`])),
    /** Miniflare's entry socket (serves /cdn-cgi/local/scheduled), as the host printed it. */
    get entry() {
      return server.logs().match(/^ENTRY (\S+?)\/?$/m)?.[1] ?? null;
    },
    port,
    inspector: inspectorPort,
    pid: server.pid,
    persistTo,
    startedMs,
    logs: server.logs,
    /** SIGKILL the whole process group (Node and workerd): a crash, not a shutdown. */
    kill: server.kill,
    async stop() {
      await server.terminate();
      if (!given) fs.rmSync(persistTo, { recursive: true, force: true });
    },
  };
}

/**
 * Starts quotagate's bundle with wrangler.toml's bindings, in the faithful host.
 * - `vars` add to (or override) wrangler.toml's [vars] and the test secrets (ADMIN_TOKEN,
 *   KEY_SECRET, ORIGIN_SECRET; `secrets: false` leaves them out, as a deploy that forgot them).
 * - `persistTo` starts on that state directory (a restart keeps it); a directory with no D1 yet
 *   gets a copy of the migrated ledger. Without it, a fresh directory is made and removed on stop.
 * - `services` binds quotagate to other Workers (`{ORIGIN: {name: "origin-worker"}}`: the origin
 *   as a service), and `workers` runs those Workers beside it (`[{name, script, vars?,
 *   services?}]`, each an ES module on a socket of its own; the result's `workers` maps each name
 *   to its address), e.g. an app Worker bound to quotagate's `QuotaService` entrypoint.
 * - `d1` adds D1 bindings (a second ledger shard); `replicas` adds isolates of the same Worker
 *   bound to the same Durable Object namespace and D1 (several locations serving one org).
 * - `logs: "warn"` keeps only warnings and errors (a benchmark host); `script` runs another build
 *   of the bundle (the benchmark's profile reads one with function names); `inspectorPort` opens
 *   the V8 inspector (profiling only).
 * - `up` is the path that must answer 200 before the gateway counts as started: healthz, unless
 *   the test means to start a misconfigured gateway (whose healthz is a 503 by design).
 * Returns what `startWorker` returns, plus `scheduled()`, which fires the cron handler.
 */
export async function startGateway({
  vars = {}, secrets = true, persistTo = null, d1 = {}, replicas = 0, logs = "all", script = null, inspectorPort,
  up = "/_quota/healthz", services, workers,
} = {}) {
  const dir = await quotagateBundle();
  const config = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
  const state = persistTo ?? tempDir();
  if (!fs.existsSync(path.join(state, "v3/d1"))) fs.cpSync(path.join(dir, "ledger"), state, { recursive: true });
  const host = await startWorker({
    name: "quotagate",
    script: script ?? entryModule(path.join(dir, "worker")),
    vars: { ...config.vars, ...(secrets ? { ADMIN_TOKEN, KEY_SECRET, ORIGIN_SECRET } : {}), ...vars },
    durableObjects: config.durableObjects,
    d1: { ...config.d1, ...d1 },
    compatibilityDate: config.compatibilityDate,
    health: up,
    persistTo: state,
    replicas,
    logs,
    inspectorPort,
    services,
    workers,
  });
  const stop = host.stop;
  return Object.assign(host, {
    vars,
    /** Fires the Worker's scheduled handler (the cron) as Cloudflare would. */
    scheduled: () => fetch(`${host.entry}/cdn-cgi/local/scheduled`),
    async stop() {
      await stop();
      if (persistTo === null) fs.rmSync(state, { recursive: true, force: true });
    },
  });
}

/**
 * Waits until `healthUrl` answers 200 from a process group started with `detached: true`;
 * kills the group and throws with its output if it exits or is not healthy in `timeoutMs`.
 */
export async function waitHealthy(child, healthUrl, what, logs, everyMs, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${what} exited ${child.exitCode}:\n${logs()}`);
    try {
      const r = await fetch(healthUrl);
      if (r.status === 200) return;
    } catch {}
    if (Date.now() > deadline) {
      process.kill(-child.pid, "SIGKILL");
      throw new Error(`${what} did not become healthy in ${timeoutMs / 1000} s:\n${logs()}`);
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** The local D1 ledger's SQLite file under a persistence directory. */
export function ledgerFile(persistTo) {
  const dir = path.join(persistTo, "v3/d1/miniflare-D1DatabaseObject");
  const file = fs.readdirSync(dir).find((f) => f.endsWith(".sqlite") && f !== "metadata.sqlite");
  if (!file) throw new Error(`no D1 database under ${dir}`);
  return path.join(dir, file);
}

/** Runs one query on the ledger directly (a fresh connection sees the latest commits). */
export async function ledgerQuery(persistTo, sql, ...params) {
  const { DatabaseSync } = await import("node:sqlite");
  const db = new DatabaseSync(ledgerFile(persistTo), { readOnly: true });
  // workerd may be writing: wait for its lock rather than fail.
  db.exec("PRAGMA busy_timeout = 5000");
  try {
    return db.prepare(sql).all(...params);
  } finally {
    db.close();
  }
}

/**
 * Makes the ledger fail: holds SQLite's exclusive lock on D1's file, so every D1 write fails
 * with SQLITE_BUSY until `release()`. A real fault in the real database, no code hook.
 */
export async function lockLedger(persistTo) {
  const { DatabaseSync } = await import("node:sqlite");
  const db = new DatabaseSync(ledgerFile(persistTo));
  db.exec("BEGIN EXCLUSIVE");
  return {
    release() {
      db.exec("COMMIT");
      db.close();
    },
    /** Writes directly to the ledger (for injecting drift) while holding the lock. */
    exec(sql) {
      db.exec(sql);
    },
    /** Reads through the lock holder's own connection. */
    query(sql, ...params) {
      return db.prepare(sql).all(...params);
    },
  };
}
