// The Workers beside quotagate in the tests: the origin as a Worker (bound to quotagate as the
// `ORIGIN` service) and a TypeScript API Worker that calls quotagate through its `QuotaService`
// entrypoint with the Hono middleware of clients/quotagate. The TypeScript one is bundled with
// esbuild (wrangler's own) into build/workers/, as wrangler would bundle it for a deploy.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { ROOT } from "./bundle.mjs";

const ESBUILD = path.join(ROOT, "node_modules/.bin/esbuild");
export const ORIGIN_WORKER = path.join(ROOT, "tests/e2e/workers/origin.mjs");

/** `tests/e2e/workers/<name>.ts` bundled as one ES module; its path. */
export function bundleWorker(name) {
  const entry = path.join(ROOT, `tests/e2e/workers/${name}.ts`);
  const out = path.join(ROOT, "build/workers", `${name}-${process.pid}.mjs`);
  fs.mkdirSync(path.dirname(out), { recursive: true });
  execFileSync(ESBUILD, [entry, "--bundle", "--format=esm", "--platform=neutral", "--target=es2022",
    "--main-fields=module,main", `--outfile=${out}`, "--log-level=warning"], { cwd: ROOT, stdio: "inherit" });
  // Named for this process (test files run side by side), and gone with it.
  process.on("exit", () => fs.rmSync(out, { force: true }));
  return out;
}

/** quotagate's start options for both bindings: the origin Worker and the app Worker. */
export function boundWorkers() {
  return {
    services: { ORIGIN: { name: "origin-worker" } },
    workers: [
      { name: "origin-worker", script: ORIGIN_WORKER },
      {
        name: "app",
        script: bundleWorker("app"),
        vars: { GATEWAY_URL: "$GATEWAY_URL" },
        services: { QUOTA: { name: "quotagate", entrypoint: "QuotaService" } },
      },
    ],
  };
}
