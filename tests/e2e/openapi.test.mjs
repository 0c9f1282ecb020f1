// The OpenAPI 3.1 document is served, and the running gateway conforms to it: schemathesis
// generates thousands of requests from the document (valid and invalid) and checks that none is
// answered with a 5xx, and that every status, content type and body matches what is documented.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { ROOT } from "../support/gateway.mjs";
import { useGateway } from "../support/harness.mjs";
import { ADMIN_TOKEN } from "../support/client.mjs";

const ST = process.env.SCHEMATHESIS;
let key;
const reservations = [];
// Keys of acme's that the run may roll and revoke (never the one it calls the usage API with).
const spareKeys = [];
// The usage API's own per-org limits are tested in parity.test; here they would only turn
// schemathesis's requests into 429s.
const fx = useGateway({ vars: { USAGE_API_READS_PER_MINUTE: "1000000", USAGE_API_CALLS_PER_MINUTE: "1000000" }, setup: async ({ api }) => {
  await api.plan("free", { limits: [{ meter: "requests", limit: 1_000_000, period: "month" }, { meter: "rows", limit: null, period: "day" }] });
  key = (await api.newOrg("free", { id: "acme" })).key;
  // Open reservations for the commit and release operations to find (a day's ttl outlasts the run).
  for (let i = 0; i < 150; i++) {
    const r = await api.call("POST", "/_quota/v1/check", { key, body: { meter: "requests", quantity: 1, reserve: true, ttl_seconds: 86_400 } });
    assert.equal(r.status, 200, r.text);
    reservations.push(r.json.reservation.id);
  }
  for (let i = 0; i < 30; i++) spareKeys.push((await api.key("acme")).key_id);
} });

/** schemathesis's warnings that fail the run: all but validation_mismatch (see the config). */
const WARNINGS = ["missing_auth", "missing_test_data", "base_url_mismatch", "missing_deserializer", "unused_openapi_auth",
  "unsupported_regex", "method_not_allowed", "unresolvable_reference", "rate_limited", "dictionary_mismatch", "timeout_units"];
/** The least share of generated valid requests an operation must accept over the run: most. */
const ACCEPTED_FLOOR = 0.5;

/**
 * Per operation, how the API answered the positive (schema-valid) cases of the run, from
 * schemathesis's ndjson report: accepted (< 400) or rejected (400, 413, 422, …). Answers that say
 * nothing about the data sent (401, 403, 404, 409, 429) are left out, as schemathesis does.
 */
function acceptance(reportDir) {
  const file = fs.readdirSync(reportDir).find((f) => f.endsWith(".ndjson"));
  assert.ok(file, "schemathesis wrote its ndjson report");
  const ops = {};
  for (const line of fs.readFileSync(path.join(reportDir, file), "utf8").split("\n")) {
    if (!line.startsWith('{"ScenarioFinished"')) continue;
    const { recorder } = JSON.parse(line).ScenarioFinished;
    for (const [id, c] of Object.entries(recorder.cases ?? {})) {
      const v = c.value;
      const status = recorder.interactions?.[id]?.response?.status_code;
      if (v?.meta?.generation?.mode !== "positive" || !status || [401, 403, 404, 409, 429].includes(status)) continue;
      const op = (ops[`${v.method} ${v.path}`] ??= { accepted: 0, rejected: 0 });
      op[status < 400 ? "accepted" : "rejected"] += 1;
    }
  }
  return ops;
}

/** A TOML string (JSON's escapes are TOML's for the characters used here). */
const toml = (v) => JSON.stringify(v);

/**
 * schemathesis's config for this run: what the running gateway holds, so generated requests can
 * name a real meter, plan, org and open reservation (each drawn with a probability, the rest
 * generated from the schema), a date range the history accepts, and every warning an error.
 */
function config(dir) {
  const today = new Date().toISOString().slice(0, 10);
  const weekAgo = new Date(Date.now() - 7 * 86_400_000).toISOString().slice(0, 10);
  // Event times the ledger takes: within its 35-day past and 5-minute future.
  const recent = [0, 60_000, 3_600_000, 86_400_000, 20 * 86_400_000].map((ago) => new Date(Date.now() - ago).toISOString());
  // Expiries a key or a token takes: in the future.
  const future = [86_400_000, 30 * 86_400_000, 365 * 86_400_000].map((ahead) => new Date(Date.now() + ahead).toISOString());
  const dict = (name, values) => `[dictionaries.${name}]\nvalues = [${values.map(toml).join(", ")}]\n`;
  const text = `# Written by tests/e2e/openapi.test.mjs for one run.
# Every warning fails the run but one: "validation_mismatch" fires when any single round of a
# few generated cases for an operation has none accepted, which with rules across fields (a
# plan's distinct meters, a composite's declared parts, a batch's distinct event ids) comes and
# goes with the seed. The test reads the acceptance of generated valid data per operation over
# the whole run from the report instead, and holds every operation to a floor.
[warnings]
display = ${toml(WARNINGS)}
fail-on = ${toml(WARNINGS)}

${dict("meters", ["requests", "rows"])}
${dict("plans", ["free"])}
${dict("orgs", ["acme"])}
${dict("reservations", reservations)}
${dict("recent", recent)}
${dict("future", future)}
${dict("keys", spareKeys)}
[parameters]
"body.meter" = { dictionary = "meters", probability = 0.8 }
"body.events[*].meter" = { dictionary = "meters", probability = 0.8 }
"body.events[*].timestamp" = { dictionary = "recent", probability = 0.9 }
"query.meter" = { dictionary = "meters", probability = 0.8 }
"body.plan" = { dictionary = "plans", probability = 0.8 }
"path.org_id" = { dictionary = "orgs", probability = 0.5 }
"path.id" = { dictionary = "reservations", probability = 0.8 }
"body.expires_at" = { dictionary = "future", probability = 0.9 }
"path.key_id" = { dictionary = "keys", probability = 0.7 }

# Plans and orgs are written under other names than acme's: a generated plan replacing "free",
# or acme moved to another plan (schemathesis reuses the plan ids it has seen), would leave the
# meters this run sends unknown to acme.
[[operations]]
include-name = "PUT /_quota/admin/plans/{plan_id}"
parameters = { "path.plan_id" = "pro" }

[[operations]]
include-name = "PUT /_quota/admin/orgs/{org_id}"
parameters = { "path.org_id" = "beta" }

# A check always names a meter of acme's plan (bad meter names are the bad-input corpus's and
# the fuzz targets' job): the dictionary alone left whole fuzzing rounds of unknown meters.
[[operations]]
include-name = "POST /_quota/v1/check"
parameters = { "body.meter" = "requests" }

# A date range the ledger reads: \`to\` not before \`from\`, and not too long.
[[operations]]
include-name = "GET /_quota/v1/usage/history"
parameters = { "query.from" = ${toml(weekAgo)}, "query.to" = ${toml(today)} }

[[operations]]
include-name = "GET /_quota/admin/orgs/{org_id}/history"
parameters = { "query.from" = ${toml(weekAgo)}, "query.to" = ${toml(today)} }

[[operations]]
include-name = "GET /_quota/admin/export"
parameters = { "query.from" = ${toml(weekAgo)}, "query.to" = ${toml(today)} }
`;
  const file = path.join(dir, "schemathesis.toml");
  fs.writeFileSync(file, text);
  return file;
}

test("the document is served as committed", async () => {
  const r = await fetch(`${fx.gw.url}/_quota/openapi.json`);
  assert.equal(r.status, 200);
  const doc = await r.json();
  assert.equal(doc.openapi, "3.1.0");
  assert.deepEqual(doc, JSON.parse(fs.readFileSync(path.join(ROOT, "src/edge/openapi.json"), "utf8")));
  assert.ok(Object.keys(doc.paths).length >= 20);
});

test("schemathesis: every phase, stateful included, finds no 5xx, no mismatch and nothing it could not reach", { skip: !ST && !process.env.CI && "SCHEMATHESIS is not set (make test sets it)" }, () => {
  assert.ok(ST, "SCHEMATHESIS names the schemathesis CLI");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "quotagate-st-"));
  try {
    // One worker: with two, hypothesis describes a filter's lambda (ast.parse) on two threads at
    // once, which CPython 3.11 can fail with "AST constructor recursion depth mismatch" (a
    // SystemError that schemathesis reports as an error of the operation it was generating).
    const r = spawnSync(ST, [
      "--config-file", config(dir),
      "run", `${fx.gw.url}/_quota/openapi.json`, "--url", fx.gw.url,
      "-H", `X-API-Key: ${key}`, "-H", `Authorization: Bearer ${ADMIN_TOKEN}`,
      "-c", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
      "-n", process.env.SCHEMATHESIS_EXAMPLES ?? "10", "--phases", "examples,coverage,fuzzing,stateful", "--seed", "1", "-w", "1",
      "--max-time", process.env.SCHEMATHESIS_SECONDS ?? "120",
      "--report", "ndjson", "--report-dir", path.join(dir, "report"),
    ], { cwd: dir, encoding: "utf8", timeout: 300_000 });
    const summary = r.stdout.split("\n").filter((l) => /generated|passed|failures|Failures|ST\d{3}|API Links|Scenarios|warning/i.test(l)).join("\n");
    console.log(`schemathesis: ${summary.trim()}`);
    // The gateway's own error lines say what a 5xx was.
    const errors = fx.gw.logs().split("\n").filter((l) => /error/i.test(l)).slice(-12).join("\n");
    assert.equal(r.status, 0, `${r.stdout.slice(-8000)}${r.stderr.slice(-1000)}\ngateway errors:\n${errors}`);
    assert.match(r.stdout, /\d+ generated, \d+ passed/);
    assert.doesNotMatch(r.stdout, /WARNINGS|⚠️/, "no warning: every operation was reached, authenticated, with data to act on");
    // The stateful phase ran: operations chained through links (an org's keys, a reservation's commit).
    const links = r.stdout.match(/API Links:\s+(\d+) covered/);
    assert.ok(links && Number(links[1]) > 0, r.stdout.slice(-3000));
    assert.match(r.stdout, /✅ {2}Stateful/);
    // Generated valid data reaches each operation's logic: not mostly refused by rules the
    // schema does not state.
    const ops = acceptance(path.join(dir, "report"));
    const rates = Object.entries(ops).map(([op, { accepted, rejected }]) => [op, accepted, rejected, accepted / (accepted + rejected)]);
    console.log(rates.map(([op, a, r, rate]) => `accepted ${(rate * 100).toFixed(0).padStart(3)}% (${a}/${a + r})  ${op}`).join("\n"));
    assert.ok(rates.length >= 20, `positive cases reached ${rates.length} operations`);
    for (const [op, a, r, rate] of rates) assert.ok(rate >= ACCEPTED_FLOOR, `${op}: ${a} of ${a + r} valid requests accepted`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
