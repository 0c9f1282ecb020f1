// Starts the built worker under `wrangler dev` (workerd) for end-to-end tests: the same
// wrangler.toml as `make dev`, with the D1 migrations applied to a fresh persistence directory.
import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const WRANGLER = path.join(ROOT, "node_modules/.bin/wrangler");
const ENV = { ...process.env, CI: "true", WRANGLER_SEND_METRICS: "false", NO_COLOR: "1" };

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

/** Applies the D1 migrations to the local ledger under `persistTo`. */
export function migrate(persistTo) {
  execFileSync(WRANGLER, ["d1", "migrations", "apply", "LEDGER", "--local", "--persist-to", persistTo], {
    cwd: ROOT,
    env: ENV,
    stdio: "pipe",
  });
}

// Output kept per process: the tail of a long load run, not all of it.
const LOG_CAP = 32 * 1024 * 1024;

/**
 * Starts `wrangler dev` and waits until /_quota/healthz answers 200.
 * `vars` become `--var NAME:value`. Returns { url, port, persistTo, logs(), stop(), kill() }.
 * `config` starts another Worker (the benchmark's contenders) with its own wrangler.toml;
 * `health` is the path that must answer 200 first.
 */
export async function startGateway({
  vars = {},
  persistTo = null,
  migrateFirst = true,
  keep = false,
  config = null,
  health = "/_quota/healthz",
  logLevel = "log",
} = {}) {
  const dir = persistTo ?? tempDir();
  // A directory the harness made is removed on stop, unless the test restarts on it.
  const owned = persistTo === null && !keep;
  if (migrateFirst) migrate(dir);
  const port = await freePort();
  const inspector = await freePort();
  const args = ["dev", "--ip", "127.0.0.1", "--port", String(port), "--inspector-port", String(inspector),
    "--persist-to", dir, "--log-level", logLevel, "--show-interactive-dev-session=false"];
  if (config) args.push("--config", config);
  for (const [k, v] of Object.entries(vars)) args.push("--var", `${k}:${v}`);
  const child = spawn(WRANGLER, args, { cwd: ROOT, env: ENV, stdio: ["ignore", "pipe", "pipe"], detached: true });
  let out = "";
  const keepTail = (d) => {
    out += d;
    if (out.length > LOG_CAP) out = out.slice(-LOG_CAP / 2);
  };
  child.stdout.on("data", keepTail);
  child.stderr.on("data", keepTail);
  const url = `http://127.0.0.1:${port}`;
  await waitHealthy(child, `${url}${health}`, "wrangler dev", () => out, 250);
  const kill = (signal) => {
    try {
      process.kill(-child.pid, signal);
    } catch {}
  };
  return {
    url,
    port,
    inspector,
    pid: child.pid,
    persistTo: dir,
    logs: () => out,
    vars,
    /** SIGKILL the whole process group (wrangler and workerd): a crash, not a shutdown. */
    async kill() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once("exit", r));
      kill("SIGKILL");
      await exited;
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once("exit", r));
        kill("SIGTERM");
        const t = setTimeout(() => kill("SIGKILL"), 5_000);
        await exited;
        clearTimeout(t);
      }
      if (owned) fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Waits until `healthUrl` answers 200 from a process group started with `detached: true`;
 * kills the group and throws with its output if it exits or is not healthy in 60 s.
 */
export async function waitHealthy(child, healthUrl, what, logs, everyMs) {
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${what} exited ${child.exitCode}:\n${logs()}`);
    try {
      const r = await fetch(healthUrl);
      if (r.status === 200) return;
    } catch {}
    if (Date.now() > deadline) {
      process.kill(-child.pid, "SIGKILL");
      throw new Error(`${what} did not become healthy in 60 s:\n${logs()}`);
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
