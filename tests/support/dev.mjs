// Starts a Worker under `wrangler dev`: the developer's loop (`make dev`), with its Node proxy,
// proxy Durable Object and inspector in front of every request. Only the benchmark's `wrangler
// dev` table uses this, to show what that costs; the tests run the faithful host
// (gateway.mjs), and `make dev` itself is tested as users run it (tests/e2e/devsmoke.test.mjs).
import path from "node:path";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import { ROOT, WRANGLER_ENV } from "./bundle.mjs";
import { freePort, spawnServer, tempDir } from "./gateway.mjs";

const WRANGLER = path.join(ROOT, "node_modules/.bin/wrangler");

/**
 * `wrangler dev` on a free port with a fresh `--persist-to` directory (removed on stop); `config`
 * is another Worker's wrangler.toml, `migrate` applies quotagate's D1 migrations first, `vars`
 * become `--var NAME:value`, and `health` must answer 200 first. Returns { url, logs(), stop() }.
 */
export async function startWranglerDev({ config = null, vars = {}, migrate = false, health = "/_quota/healthz", logLevel = "log" } = {}) {
  const dir = tempDir("quotagate-dev-");
  const cfg = config ? ["--config", config] : [];
  if (migrate) execFileSync(WRANGLER, ["d1", "migrations", "apply", "LEDGER", "--local", "--persist-to", dir, ...cfg], { cwd: ROOT, env: WRANGLER_ENV, stdio: "pipe" });
  const port = await freePort();
  const inspector = await freePort();
  const args = ["dev", "--ip", "127.0.0.1", "--port", String(port), "--inspector-port", String(inspector),
    "--persist-to", dir, "--log-level", logLevel, "--show-interactive-dev-session=false", ...cfg];
  for (const [k, v] of Object.entries(vars)) args.push("--var", `${k}:${v}`);
  const url = `http://127.0.0.1:${port}`;
  const server = await spawnServer(WRANGLER, args, { env: WRANGLER_ENV, healthUrls: [`${url}${health}`], what: "wrangler dev", everyMs: 250 });
  return {
    url,
    logs: server.logs,
    async stop() {
      await server.terminate();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
