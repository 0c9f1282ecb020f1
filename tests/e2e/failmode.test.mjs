// When the org's Durable Object cannot be reached, the plan's fail mode decides: closed answers
// 503 with Retry-After, open forwards and flags it. Never a silent pass. The fault is injected
// with QUOTA_FAULTS=do_unavailable, which only the proxy path reads.
import { test } from "node:test";
import assert from "node:assert/strict";
import { gatewayWithOrigin } from "../support/harness.mjs";
import { eventually } from "../support/client.mjs";

const fx = gatewayWithOrigin({ QUOTA_FAULTS: "do_unavailable" }, async ({ api }) => {
  const limits = [{ meter: "requests", limit: 1, period: "day" }];
  await api.plan("strict", { on_failure: "closed", limits });
  await api.plan("lenient", { on_failure: "open", limits });
});

test("fail closed: 503 with Retry-After, nothing forwarded", async () => {
  await fx.api.org("org-closed", { plan: "strict" });
  const { key } = await fx.api.key("org-closed");
  const before = fx.origin.requests.length;
  const r = await fx.api.call("GET", "/x", { key });
  assert.equal(r.status, 503);
  assert.equal(r.headers.get("retry-after"), "5");
  assert.equal(r.json.type, "urn:quotagate:problem:unavailable");
  assert.equal(fx.origin.requests.length, before);
  // One JSON log line per decision (the host's output trails the response a little).
  assert.ok(await eventually(() => /"msg":"decision".*"outcome":"unavailable".*"source":"fail-closed"/.test(fx.gw.logs())), fx.gw.logs());
});

test("fail open: forwarded, flagged to client and origin, logged; revoked keys still refused", async () => {
  await fx.api.org("org-open", { plan: "lenient" });
  const { key, key_id } = await fx.api.key("org-open");
  const r = await fx.api.call("GET", "/y", { key });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get("x-quota-decision"), "fail-open");
  const seen = fx.origin.requests.at(-1);
  assert.deepEqual([seen.path, seen.headers["x-quota-decision"], seen.headers["x-quota-org"]], ["/y", "fail-open", "org-open"]);
  assert.ok(await eventually(() => /"msg":"decision".*"outcome":"allowed".*"source":"fail-open"/.test(fx.gw.logs())), fx.gw.logs());
  // Past its limit of 1, still forwarded: without the DO there is no counter to refuse from.
  assert.equal((await fx.api.call("GET", "/y", { key })).status, 200);
  await fx.api.admin("DELETE", `/orgs/org-open/keys/${key_id}`);
  assert.equal((await fx.api.call("GET", "/y", { key })).status, 401);
});
