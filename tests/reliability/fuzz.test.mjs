// Fuzzing with a fixed budget: the proptest targets in tests/fuzz.rs (plan parsing, request
// bodies, bytes whole and damaged, header rendering), run natively with FUZZ_CASES cases per
// target. At small scale the debug build `make test` already compiled runs them; at full scale a
// release build does.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { ROOT } from "../support/gateway.mjs";
import { record, scaled, SCALE } from "../support/report.mjs";

const CASES = Number(process.env.FUZZ_CASES ?? scaled(1000, 100000));

test(`fuzz: ${CASES} cases per target, no panic`, () => {
  const t0 = Date.now();
  const profile = SCALE === "full" ? ["--release"] : [];
  const r = spawnSync("cargo", ["test", "--locked", ...profile, "--test", "fuzz", "--", "--nocapture", "--test-threads", "2"], {
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
  const bodies = out.match(/bodies accepted (check=\d+ events=\d+ org=\d+)/)?.[1];
  assert.ok(accepted && bodies, out.slice(-2000));
  record(
    "Fuzzing (proptest)",
    `${targets.length} targets × ${CASES} cases: ${targets.join("; ")}`,
    `no panic and every property held in ${((Date.now() - t0) / 1000).toFixed(0)} s; ${accepted} near-valid plans accepted and rendered; bodies accepted ${bodies}`,
  );
});
