// `make dev` as a user runs it, and the README's walk-through against it: the only test that uses
// `wrangler dev`. Its origin is the demo origin Worker, bound to the gateway as a service. It starts `make dev` on free ports with its own state directory, takes the
// walk-through's shell block from README.md as written (only the gateway's address moved to the
// free port), runs it with bash and curl, and checks the answers the README shows.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { ROOT, freePort, tempDir, waitHealthy } from "../support/gateway.mjs";

const state = tempDir("quotagate-devsmoke-");
let dev;
let out = "";
after(async () => {
  if (dev && dev.exitCode === null && dev.signalCode === null) {
    const done = new Promise((r) => dev.once("exit", r));
    process.kill(-dev.pid, "SIGTERM");
    const t = setTimeout(() => process.kill(-dev.pid, "SIGKILL"), 5_000);
    await done;
    clearTimeout(t);
  }
  fs.rmSync(state, { recursive: true, force: true });
});

/** The first JSON value at the start of `text` (after white space), and the text after it. */
function takeJson(text) {
  const start = text.search(/\S/);
  let depth = 0;
  let inString = false;
  for (let i = start; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === "\\") i++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === "{" || c === "[") depth++;
    else if ((c === "}" || c === "]") && --depth === 0) return [JSON.parse(text.slice(start, i + 1)), text.slice(i + 1)];
  }
  throw new Error(`no JSON value in: ${text.slice(0, 300)}`);
}

/** The README's walk-through block: the first ```sh block under its heading. */
function walkThrough() {
  const readme = fs.readFileSync(path.join(ROOT, "README.md"), "utf8");
  const section = readme.slice(readme.indexOf("## Walk-through"));
  const m = section.match(/```sh\n([\s\S]*?)```/);
  assert.ok(m, "README.md has a walk-through shell block");
  return m[1];
}

test("make dev serves the README walk-through as the README shows it", async () => {
  const script = walkThrough();
  assert.match(script, /^GW=http:\/\/127\.0\.0\.1:8787$/m, "the walk-through talks to the gateway's documented address");
  const vars = path.join(ROOT, ".dev.vars");
  if (fs.existsSync(vars)) {
    // make dev keeps a developer's own .dev.vars; the walk-through's token is the example's.
    assert.match(fs.readFileSync(vars, "utf8"), /^ADMIN_TOKEN=dev-admin-token$/m, ".dev.vars differs from .dev.vars.example: the walk-through needs its ADMIN_TOKEN");
  }
  const port = await freePort();
  const originPort = await freePort();
  const env = { ...process.env, PORT: String(port), DEMO_ORIGIN_PORT: String(originPort), DEV_STATE: state, CI: "true", NO_COLOR: "1" };
  delete env.ORIGIN_URL; // the demo origin, as on a fresh machine
  delete env.MAKEFLAGS; // a make of its own, as a user types it
  delete env.MAKELEVEL;
  dev = spawn("make", ["--no-print-directory", "dev"], { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"], detached: true });
  dev.stdout.on("data", (d) => (out += d));
  dev.stderr.on("data", (d) => (out += d));
  // make dev builds first (a no-op after make build) and migrates; wrangler dev then starts.
  await waitHealthy(dev, `http://127.0.0.1:${port}/_quota/healthz`, "make dev", () => out, 250, 300_000);
  assert.match(out, /Migrations to be applied|No migrations to apply/, "make dev migrated the local ledger");
  const origin = await fetch(`http://127.0.0.1:${originPort}/hello`);
  assert.equal((await origin.json()).origin, "demo", "the demo origin is up on DEMO_ORIGIN_PORT");

  const run = spawnSync("bash", ["-c", script.replace(/^GW=http:\/\/127\.0\.0\.1:8787$/m, `GW=http://127.0.0.1:${port}`)], {
    cwd: ROOT, encoding: "utf8", timeout: 120_000,
  });
  assert.equal(run.status, 0, run.stderr);
  // curl -s prints the JSON bodies with no newline after them: read them one value at a time.
  const [plan, afterPlan] = takeJson(run.stdout);
  const [org0, afterOrg] = takeJson(afterPlan);
  // 1 and 2: the plan and the org are echoed back.
  assert.deepEqual([plan.id, plan.limits.length], ["free", 3], JSON.stringify(plan));
  assert.equal(org0.plan, "free", JSON.stringify(org0));
  const lines = afterOrg.split(/\r?\n/);
  assert.match(lines[0], /^qg_acme\.\S+\.\S+$/, "echo $KEY prints qg_acme.<random>.<tag>");
  // 3: "200 200 200 429".
  assert.deepEqual(lines.slice(1, 5), ["200", "200", "200", "429"]);
  // 4: the refusal, with the fields the README shows.
  const refusal = run.stdout.slice(run.stdout.indexOf("HTTP/1.1 429"));
  assert.match(refusal, /^HTTP\/1\.1 429 Too Many Requests/);
  assert.match(refusal, /^RateLimit-Policy: "requests-minute";q=3;w=60, "requests-month";q=1000;w=\d+\r$/im);
  assert.match(refusal, /^RateLimit: "requests-minute";r=0;t=\d+, "requests-month";r=997;t=\d+\r$/im);
  assert.match(refusal, /^Retry-After: \d+\r$/im);
  const [problem, afterProblem] = takeJson(refusal.slice(refusal.indexOf("\r\n\r\n") + 4));
  assert.deepEqual([problem.detail, problem.limit, problem.meter, problem.plan], ["Quota exceeded for requests", 3, "requests", "free"]);
  // 5: the reported AI tokens: used 700, overage 200, 1 cent.
  const [org] = takeJson(afterProblem);
  const ai = org.state.limits.find((l) => l.policy === "ai_tokens-month");
  assert.deepEqual([ai.used, ai.overage, ai.overage_cost_cents], [700, 200, 1], JSON.stringify(ai));
  // The proxied requests went to the origin Worker, bound to the gateway as the ORIGIN service.
  const viaBinding = await fetch(`http://127.0.0.1:${port}/v1/ai/check`, { method: "POST", headers: { "x-api-key": lines[0] } });
  assert.equal(viaBinding.status, 200);
  assert.equal(viaBinding.headers.get("x-origin"), "worker");
  const seen = await viaBinding.json();
  assert.deepEqual([seen.origin, seen.headers["x-quota-org"]], ["worker", "acme"], "signed tenant headers reached the origin Worker");
});
