// Fuzzing with a fixed budget: the proptest targets in tests/fuzz.rs (plan parsing, request
// bodies, raw bytes, header rendering), run natively with FUZZ_CASES cases per target.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { ROOT } from "../support/gateway.mjs";
import { record, scaled } from "../support/report.mjs";

const CASES = Number(process.env.FUZZ_CASES ?? scaled(1000, 100000));

test(`fuzz: ${CASES} cases per target, no panic`, () => {
  const t0 = Date.now();
  const r = spawnSync("cargo", ["test", "--locked", "--release", "--test", "fuzz", "--", "--nocapture", "--test-threads", "2"], {
    cwd: ROOT,
    env: { ...process.env, FUZZ_CASES: String(CASES) },
    encoding: "utf8",
    maxBuffer: 64 * 1024 * 1024,
  });
  const out = `${r.stdout}\n${r.stderr}`;
  assert.equal(r.status, 0, out.slice(-4000));
  const targets = [...out.matchAll(/^fuzz: target=(.+) cases=(\d+)$/gm)].map((m) => m[1]);
  assert.equal(targets.length, 4, out.slice(-2000));
  const accepted = out.match(/near-valid plans accepted=(\d+)/)?.[1];
  record(
    "Fuzzing (proptest)",
    `${targets.length} targets × ${CASES} cases: ${targets.join("; ")}`,
    `no panic in ${((Date.now() - t0) / 1000).toFixed(0)} s; ${accepted} near-valid plans accepted and rendered`,
  );
});
