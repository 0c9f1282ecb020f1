// The OpenAPI 3.1 document is served, and the running gateway conforms to it: schemathesis
// generates thousands of requests from the document (valid and invalid) and checks that none is
// answered with a 5xx, and that every status, content type and body matches what is documented.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { startGateway, ROOT } from "../support/gateway.mjs";
import { client, ADMIN_TOKEN, KEY_SECRET, ORIGIN_SECRET } from "../support/client.mjs";

const ST = process.env.SCHEMATHESIS;
let gw, key;
before(async () => {
  gw = await startGateway({ vars: { ADMIN_TOKEN, KEY_SECRET, ORIGIN_SECRET, ORIGIN_URL: "http://127.0.0.1:9" } });
  const api = client(gw.url);
  await api.plan("free", { limits: [{ meter: "requests", limit: 1000, period: "month" }, { meter: "rows", limit: null, period: "day" }] });
  await api.org("acme", { plan: "free" });
  key = (await api.key("acme")).key;
});
after(async () => {
  await gw?.stop();
});

test("the document is served as committed", async () => {
  const r = await fetch(`${gw.url}/_quota/openapi.json`);
  assert.equal(r.status, 200);
  const doc = await r.json();
  assert.equal(doc.openapi, "3.1.0");
  assert.deepEqual(doc, JSON.parse(fs.readFileSync(path.join(ROOT, "src/edge/openapi.json"), "utf8")));
  assert.ok(Object.keys(doc.paths).length >= 20);
});

test("schemathesis: no 5xx, and statuses, content types and bodies conform", { skip: !ST && "SCHEMATHESIS is not set (make test sets it)" }, () => {
  const r = spawnSync(ST, [
    "run", `${gw.url}/_quota/openapi.json`, "--url", gw.url,
    "-H", `X-API-Key: ${key}`, "-H", `Authorization: Bearer ${ADMIN_TOKEN}`,
    "-c", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
    "-n", process.env.SCHEMATHESIS_EXAMPLES ?? "10", "--phases", "examples,coverage,fuzzing", "--seed", "1", "-w", "2",
    "--max-time", "150",
  ], { encoding: "utf8", timeout: 240_000 });
  const summary = r.stdout.split("\n").filter((l) => /generated|passed|failures|Failures|ST\d{3}/.test(l)).join("\n");
  console.log(`schemathesis: ${summary.trim()}`);
  assert.equal(r.status, 0, r.stdout.slice(-4000) + r.stderr.slice(-1000));
  assert.match(r.stdout, /\d+ generated, \d+ passed/);
});
