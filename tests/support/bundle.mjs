// The deployable bundle the tests and the benchmarks run, made once per build under build/bundle/:
//   worker/       what `wrangler deploy --dry-run --outdir` writes (the bundle `wrangler deploy`
//                 would upload: the entry module and the wasm);
//   config.json   the runtime settings of wrangler.toml, read by wrangler's own config reader
//                 (vars, Durable Object and D1 bindings, compatibility date), so the faithful
//                 host runs the Worker with exactly the bindings a deploy declares;
//   ledger/       a persistence directory with the D1 migrations applied by
//                 `wrangler d1 migrations apply --local`; each test gateway starts on a copy of it
//                 instead of running wrangler again.
// It is remade when any input is newer than it. `make bundle` runs it before the suites, so the
// parallel test files only read it; a test file run by hand makes it first if it is missing.
//
// Usage: node tests/support/bundle.mjs   (prints the bundle directory)
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const BUNDLE_DIR = path.join(ROOT, "build/bundle");
const WRANGLER = path.join(ROOT, "node_modules/.bin/wrangler");
export const WRANGLER_ENV = { ...process.env, CI: "true", WRANGLER_SEND_METRICS: "false", NO_COLOR: "1" };

/** What the bundle is made from: the build output, the entry module, the config, the migrations. */
function inputs() {
  const migrations = fs.readdirSync(path.join(ROOT, "migrations")).map((f) => path.join(ROOT, "migrations", f));
  return [
    path.join(ROOT, "build/index.js"),
    path.join(ROOT, "build/index_bg.wasm"),
    path.join(ROOT, "worker/entry.mjs"),
    path.join(ROOT, "wrangler.toml"),
    ...migrations,
  ];
}

function newestInput() {
  let newest = 0;
  for (const f of inputs()) {
    if (!fs.existsSync(f)) throw new Error(`${path.relative(ROOT, f)} is missing: run \`make build\` first`);
    newest = Math.max(newest, fs.statSync(f).mtimeMs);
  }
  return newest;
}

/** The bundle directory, made first if it is missing or older than what it is made from. */
export async function quotagateBundle() {
  const stamp = path.join(BUNDLE_DIR, "config.json");
  if (fs.existsSync(stamp) && fs.statSync(stamp).mtimeMs >= newestInput()) return BUNDLE_DIR;
  // Made aside and renamed into place: a parallel maker's half-written directory is never read.
  fs.mkdirSync(path.dirname(BUNDLE_DIR), { recursive: true });
  const tmp = fs.mkdtempSync(`${BUNDLE_DIR}.tmp-`);
  try {
    execFileSync(WRANGLER, ["deploy", "--dry-run", "--outdir", path.join(tmp, "worker")], { cwd: ROOT, env: WRANGLER_ENV, stdio: "pipe" });
    execFileSync(WRANGLER, ["d1", "migrations", "apply", "LEDGER", "--local", "--persist-to", path.join(tmp, "ledger")], {
      cwd: ROOT, env: WRANGLER_ENV, stdio: "pipe",
    });
    const { unstable_readConfig } = await import("wrangler");
    const c = unstable_readConfig({ config: path.join(ROOT, "wrangler.toml") });
    const config = {
      compatibilityDate: c.compatibility_date,
      compatibilityFlags: c.compatibility_flags ?? [],
      vars: c.vars ?? {},
      durableObjects: Object.fromEntries((c.durable_objects?.bindings ?? []).map((b) => [b.name, b.class_name])),
      d1: Object.fromEntries((c.d1_databases ?? []).map((d) => [d.binding, d.database_id])),
    };
    fs.writeFileSync(path.join(tmp, "config.json"), JSON.stringify(config, null, 2));
    fs.rmSync(BUNDLE_DIR, { recursive: true, force: true });
    try {
      fs.renameSync(tmp, BUNDLE_DIR);
    } catch (e) {
      // Another process renamed its own in first: theirs is as good as ours.
      if (!fs.existsSync(stamp)) throw e;
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return BUNDLE_DIR;
}

/** The bundle's entry module (the path the host loads; its wasm lies beside it). */
export function entryModule(dir) {
  const files = fs.readdirSync(dir);
  const entry = files.find((f) => f.endsWith(".js") && !f.endsWith(".map"));
  if (!entry) throw new Error(`no entry module in ${dir}: ${files.join(", ")}`);
  return path.join(dir, entry);
}

/** The bundle of another Worker (a benchmark contender) from its own wrangler config. */
export function bundleOf(config, outdir) {
  if (!fs.existsSync(outdir)) {
    execFileSync(WRANGLER, ["deploy", "--dry-run", "--outdir", outdir, "--config", config], { cwd: ROOT, env: WRANGLER_ENV, stdio: "pipe" });
  }
  return entryModule(outdir);
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  console.log(await quotagateBundle());
}
