// One DO step, one transaction. A step whose write fails half way (injected: with
// QUOTA_FAULTS=apply_fails a step that records an idempotency key fails after writing its counter)
// must leave nothing behind: not the counter without the key record, which would make the
// client's retry count a second time. The gateway is then restarted on the same state without the
// fault, as an operator would, and the retry must count exactly once.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import { startGateway, tempDir } from "../support/gateway.mjs";
import { client } from "../support/client.mjs";
import { createOrigin } from "../support/origin.mjs";

const dir = tempDir("quotagate-tx-");
const origin = createOrigin();
let gw;
after(async () => {
  await gw?.stop();
  await origin.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

test("a step that fails half way writes nothing: the retry with the same Idempotency-Key counts once", async () => {
  const vars = { ORIGIN_URL: `http://127.0.0.1:${await origin.listen()}` };
  gw = await startGateway({ vars: { ...vars, QUOTA_FAULTS: "apply_fails" }, persistTo: dir });
  let api = client(gw.url);
  await api.plan("tx", { limits: [{ meter: "requests", limit: 100, period: "month" }] });
  const org = await api.newOrg("tx", { id: "org-tx" });
  const send = () => api.call("GET", "/v1/pay", { key: org.key, headers: { "idempotency-key": "pay-1" } });

  const failed = await send();
  assert.equal(failed.status, 503, failed.text); // the plan fails closed when the DO cannot decide
  assert.equal(origin.requests.length, 0, "nothing reached the origin");
  assert.ok(/fault injected: apply_fails/.test(gw.logs()), "the fault fired");
  // Nothing of the failed step stayed: the counter is where it was.
  assert.equal(await api.used(org.id, "requests-month"), 0);

  await gw.stop();
  gw = await startGateway({ vars, persistTo: dir });
  api = client(gw.url);
  const retry = await send();
  assert.equal(retry.status, 200);
  assert.equal(retry.headers.get("idempotent-replayed"), null, "the failed step left no key record");
  assert.equal(await api.used(org.id, "requests-month"), 1);
  assert.equal(origin.requests.length, 1);
});
