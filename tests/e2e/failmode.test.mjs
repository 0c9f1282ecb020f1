// When the org's Durable Object cannot be reached, the plan's fail mode decides: closed answers
// 503 with Retry-After, open forwards and flags it. Never a silent pass. The fault is injected
// with QUOTA_FAULTS=do_unavailable, which only the proxy path reads.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway } from "../support/gateway.mjs";
import { createOrigin } from "../support/origin.mjs";
import { client, eventually, ADMIN_TOKEN, KEY_SECRET, ORIGIN_SECRET } from "../support/client.mjs";

let gw, origin, api;
before(async () => {
  origin = createOrigin();
  const port = await origin.listen();
  gw = await startGateway({
    vars: { ADMIN_TOKEN, KEY_SECRET, ORIGIN_SECRET, ORIGIN_URL: `http://127.0.0.1:${port}`, QUOTA_FAULTS: "do_unavailable" },
  });
  api = client(gw.url);
  const limits = [{ meter: "requests", limit: 1, period: "day" }];
  await api.plan("strict", { on_failure: "closed", limits });
  await api.plan("lenient", { on_failure: "open", limits });
});
after(async () => {
  await gw?.stop();
  await origin?.close();
});

test("fail closed: 503 with Retry-After, nothing forwarded", async () => {
  await api.org("org-closed", { plan: "strict" });
  const { key } = await api.key("org-closed");
  const before = origin.requests.length;
  const r = await api.call("GET", "/x", { key });
  assert.equal(r.status, 503);
  assert.equal(r.headers.get("retry-after"), "5");
  assert.equal(r.json.type, "urn:quotagate:problem:unavailable");
  assert.equal(origin.requests.length, before);
  // One JSON log line per decision (wrangler's output trails the response a little).
  assert.ok(await eventually(() => /"msg":"decision".*"outcome":"unavailable".*"source":"fail-closed"/.test(gw.logs())), gw.logs());
});

test("fail open: forwarded, flagged to client and origin, logged; revoked keys still refused", async () => {
  await api.org("org-open", { plan: "lenient" });
  const { key, key_id } = await api.key("org-open");
  const r = await api.call("GET", "/y", { key });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get("x-quota-decision"), "fail-open");
  const seen = origin.requests.at(-1);
  assert.deepEqual([seen.path, seen.headers["x-quota-decision"], seen.headers["x-quota-org"]], ["/y", "fail-open", "org-open"]);
  assert.ok(await eventually(() => /"msg":"decision".*"outcome":"allowed".*"source":"fail-open"/.test(gw.logs())), gw.logs());
  // Past its limit of 1, still forwarded: without the DO there is no counter to refuse from.
  assert.equal((await api.call("GET", "/y", { key })).status, 200);
  await api.admin("DELETE", `/orgs/org-open/keys/${key_id}`);
  assert.equal((await api.call("GET", "/y", { key })).status, 401);
});
