// Collects the reliability suite's records (one JSON line per check, see tests/support/report.mjs)
// into a JSON summary, and with --publish into bench/reliability.json and bench/RESULTS.md.
//
//   node bench/reliability.mjs <records.jsonl> <out.json> [--publish]
import fs from "node:fs";
import path from "node:path";
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { render } from "./render.mjs";

const [input, output, publish] = process.argv.slice(2);
const checks = fs.readFileSync(input, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));
if (checks.length === 0) throw new Error(`no records in ${input}`);
const here = path.dirname(fileURLToPath(import.meta.url));
const summary = {
  scale: checks[0].scale,
  date: checks.at(-1).at,
  commit: execFileSync("git", ["-C", here, "rev-parse", "--short", "HEAD"]).toString().trim(),
  checks: checks.map(({ check, ran, result }) => ({ check, ran, result })),
};
fs.writeFileSync(output, JSON.stringify(summary, null, 2) + "\n");
console.log(`reliability (${summary.scale}): ${checks.length} checks → ${output}`);
for (const c of summary.checks) console.log(`  ${c.check}: ${c.result}`);
if (publish === "--publish") {
  fs.copyFileSync(output, path.join(here, "reliability.json"));
  render(here);
  console.log("published to bench/reliability.json and bench/RESULTS.md");
}
