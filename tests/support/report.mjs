// The reliability suite's scale and its summary: each check records what ran and what it found,
// one JSON line per check in $RELIABILITY_REPORT, which bench/reliability.mjs turns into the
// table in bench/RESULTS.md.
import fs from "node:fs";
import path from "node:path";

/** `small` in `make test`, `full` in `make reliability`. */
export const SCALE = process.env.RELIABILITY_SCALE === "full" ? "full" : "small";

/** The count for this scale. */
export const scaled = (small, full) => (SCALE === "full" ? full : small);

/** Records one check's line for the summary table (a no-op when no report file is set). */
export function record(check, ran, result) {
  const file = process.env.RELIABILITY_REPORT;
  if (!file) return;
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.appendFileSync(file, JSON.stringify({ check, ran, result, scale: SCALE, at: new Date().toISOString() }) + "\n");
}
