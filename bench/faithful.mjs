// Starts a Worker in the faithful runtime (bench/host.mjs: the Miniflare API on a direct socket)
// from the bundle `wrangler deploy --dry-run --outdir` writes, the same bundle `wrangler deploy`
// would upload. Each host is a process group of its own (Node + workerd), so its CPU can be read
// from /proc apart from the load generator's and the origin's.
import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { freePort, migrate, tempDir, waitHealthy, ROOT } from "../tests/support/gateway.mjs";

const WRANGLER = path.join(ROOT, "node_modules/.bin/wrangler");
const ENV = { ...process.env, CI: "true", WRANGLER_SEND_METRICS: "false", NO_COLOR: "1" };

/** The deployable bundle of a wrangler config, written once per run into `outdir`. */
export function bundle(config, outdir) {
  if (!fs.existsSync(outdir)) {
    execFileSync(WRANGLER, ["deploy", "--dry-run", "--outdir", outdir, "--config", config], { cwd: ROOT, env: ENV, stdio: "pipe" });
  }
  const entry = fs.readdirSync(outdir).find((f) => f.endsWith(".js") && !f.endsWith(".map"));
  if (!entry) throw new Error(`no entry module in ${outdir}`);
  return path.join(outdir, entry);
}

/**
 * Starts `script` (a bundle's entry module) with these bindings; resolves once `health` answers
 * 200. `migrations` applies quotagate's D1 migrations to a fresh persistence directory first.
 * Returns { url, pid, persistTo, startedMs, stop() }; `startedMs` is spawn → first healthy answer.
 * `persistTo` reuses a state directory (kept on stop); otherwise a fresh one is made and removed.
 */
export async function startFaithful({ name, script, vars = {}, durableObjects, d1, ratelimits, migrations = false, health, inspectorPort, persistTo: given, replicas = 0 }) {
  // A given directory is the caller's (e.g. a restart on the same state) and is kept on stop.
  const persistTo = given ?? tempDir("quotagate-bench-");
  if (migrations) migrate(persistTo);
  const port = await freePort();
  const replicaPorts = [];
  for (let i = 0; i < replicas; i++) replicaPorts.push(await freePort());
  const spec = path.join(persistTo, "host.json");
  fs.writeFileSync(spec, JSON.stringify({ name, script, port, persist: persistTo, vars, durableObjects, d1, ratelimits, inspectorPort, replicas: replicaPorts }));
  const t0 = performance.now();
  const child = spawn(process.execPath, [path.join(ROOT, "bench/host.mjs"), spec], {
    cwd: ROOT,
    env: ENV,
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  let out = "";
  const keep = (d) => (out = (out + d).slice(-65536));
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  const url = `http://127.0.0.1:${port}`;
  // Polled often: the time to the first healthy answer is the cold-start figure.
  await waitHealthy(child, `${url}${health}`, `host for ${name}`, () => out, 50);
  const startedMs = performance.now() - t0;
  for (const p of replicaPorts) await waitHealthy(child, `http://127.0.0.1:${p}${health}`, `replica of ${name}`, () => out, 50);
  return {
    url,
    /** Every isolate's address: the first Worker's, then each replica's. */
    urls: [url, ...replicaPorts.map((p) => `http://127.0.0.1:${p}`)],
    inspector: inspectorPort,
    pid: child.pid,
    persistTo,
    startedMs,
    logs: () => out,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once("exit", r));
        try {
          process.kill(-child.pid, "SIGTERM");
        } catch {}
        const t = setTimeout(() => {
          try {
            process.kill(-child.pid, "SIGKILL");
          } catch {}
        }, 5_000);
        await exited;
        clearTimeout(t);
      }
      if (!given) fs.rmSync(persistTo, { recursive: true, force: true });
    },
  };
}

/** quotagate's D1 binding, as wrangler.toml declares it. */
export const QUOTAGATE_D1 = { LEDGER: "00000000-0000-0000-0000-000000000000" };
