// quotagate between Workers, both ways, with no public URL between them:
// - the origin as a service: quotagate forwards to an origin Worker bound as `ORIGIN`, with the
//   same signed tenant headers, release on failure and `X-Usage-*` metering as over HTTP;
// - quotagate as a service: an API Worker written in TypeScript with Hono (tests/e2e/workers/
//   app.ts) binds quotagate's `QuotaService` entrypoint and guards its routes with the middleware
//   of clients/quotagate: admission to the limit, then quotagate's own 429 with its RateLimit
//   fields (parsed as RFC 9651), a race for the last units, idempotent records, and reservations
//   committed and released over RPC with the HTTP API's answers.
import { test } from "node:test";
import assert from "node:assert/strict";
import { parseList } from "structured-headers";
import { useGateway } from "../support/harness.mjs";
import { boundWorkers } from "../support/workers.mjs";
import { verifyOriginSignature } from "../support/client.mjs";

const ROUTES = JSON.stringify([
  { method: "POST", path: "/v1/ai/**", meter: "ai_tokens", cost: "reported" },
  { path: "/v1/**", meter: "requests" },
]);
// No ORIGIN_URL reaches anything here: the ORIGIN binding is the origin.
const fx = useGateway({ vars: { ROUTES, ORIGIN_URL: "http://127.0.0.1:9" }, ...boundWorkers() });
const app = (path, { org, method = "GET", body, headers = {} } = {}) =>
  fetch(`${fx.gw.workers.app}${path}`, {
    method,
    headers: { ...(org ? { "x-org": org } : {}), ...(body ? { "content-type": "application/json" } : {}), ...headers },
    body: body ? JSON.stringify(body) : undefined,
  });
const rpc = async (method, org, args, id) => (await app(`/rpc/${method}`, { method: "POST", body: { org, id, args } })).json();
const LIMITS = [
  { meter: "requests", limit: 5, period: "minute" },
  { meter: "requests", limit: 1000, period: "month" },
  { meter: "ai_tokens", limit: 1000, period: "month" },
];

test("the origin as a service binding: signed tenant headers, release on failure, X-Usage metering", async () => {
  const o = await fx.api.newOrg("svc", { prefix: "svc", limits: LIMITS });
  const r = await fx.api.call("GET", "/v1/things?x=1", { key: o.key });
  assert.equal(r.status, 200, r.text);
  const seen = r.json;
  assert.equal(seen.origin, "worker", "the origin Worker answered, through the binding");
  const h = seen.headers;
  assert.equal(h["x-quota-org"], o.id);
  assert.equal(h["x-api-key"], undefined, "no credential reaches the origin");
  assert.ok(verifyOriginSignature({ method: "GET", path: "/v1/things", query: "?x=1", headers: h }), "signed as over HTTP");
  assert.ok(r.headers.get("ratelimit"), "the client gets the RateLimit fields");
  assert.equal(await fx.api.used(o.id, "requests-month"), 1);
  // A failing origin gives the units back, as over HTTP.
  assert.equal((await fx.api.call("GET", "/v1/things?status=503", { key: o.key })).status, 503);
  assert.equal(await fx.api.used(o.id, "requests-month"), 1, "released");
  // A reported cost is metered from the origin Worker's X-Usage header, which the client never sees.
  const ai = await fx.api.call("POST", "/v1/ai/complete?usage=ai_tokens:120", { key: o.key, body: {} });
  assert.equal(ai.status, 200);
  assert.equal(ai.headers.get("x-usage-ai-tokens"), null);
  let used = 0;
  for (let i = 0; i < 50 && used !== 120; i++) {
    used = await fx.api.used(o.id, "ai_tokens-month");
    if (used !== 120) await new Promise((res) => setTimeout(res, 50));
  }
  assert.equal(used, 120);
});

test("the Hono middleware over RPC: admitted up to the limit, then quotagate's 429 with its headers", async () => {
  const o = await fx.api.newOrg("mw", { prefix: "mw", limits: LIMITS });
  for (let i = 0; i < 5; i++) {
    const r = await app("/api/hello", { org: o.id });
    assert.equal(r.status, 200, await r.clone().text());
    const rl = parseList(r.headers.get("ratelimit"));
    const minute = rl.find(([name]) => name === "requests-minute");
    assert.equal(minute[1].get("r"), 4 - i, "r counts down as the HTTP API's would");
    assert.ok(parseList(r.headers.get("ratelimit-policy")).some(([n, p]) => n === "requests-minute" && p.get("q") === 5 && p.get("w") === 60));
    assert.equal(r.headers.get("x-ratelimit-limit"), "5");
  }
  const refused = await app("/api/hello", { org: o.id });
  assert.equal(refused.status, 429);
  assert.equal(refused.headers.get("content-type"), "application/problem+json");
  const problem = await refused.json();
  assert.equal(problem.type, "urn:quotagate:problem:quota-exceeded");
  assert.deepEqual(problem["violated-policies"], ["requests-minute"]);
  assert.equal(problem.meter, "requests");
  const retry = Number(refused.headers.get("retry-after"));
  assert.ok(retry >= 1 && retry <= 12, `Retry-After ${retry}`);
  const t = parseList(refused.headers.get("ratelimit")).find(([n]) => n === "requests-minute")[1].get("t");
  assert.equal(t, retry, "t and Retry-After agree");
  // The proxy refuses the same org with the same problem (its key, over HTTP).
  const viaProxy = await fx.api.call("GET", "/v1/x", { key: o.key });
  assert.equal(viaProxy.status, 429);
  assert.deepEqual(Object.keys(viaProxy.json).sort(), Object.keys(problem).sort());
  assert.equal(await fx.api.used(o.id, "requests-month"), 5, "the refusal counted nothing");
  // A failing handler gives its units back; a reported cost is committed as reported.
  const o2 = await fx.api.newOrg("mw", { prefix: "mw2" });
  assert.equal((await app("/api/fail", { org: o2.id })).status, 500);
  assert.equal(await fx.api.used(o2.id, "requests-month"), 0, "released");
  const ai = await app("/ai/complete?tokens=37", { org: o2.id, method: "POST" });
  assert.equal(ai.status, 200);
  assert.equal(await fx.api.used(o2.id, "ai_tokens-month"), 37);
  // An org quotagate does not know is its 404, passed on.
  const unknown = await app("/api/hello", { org: "nobody-here" });
  assert.equal(unknown.status, 404);
  assert.equal((await unknown.json()).type, "urn:quotagate:problem:unknown-org");
});

test("the same client and middleware over the HTTP API: the same decisions and headers", async () => {
  const o = await fx.api.newOrg("http-mw", { prefix: "http", limits: LIMITS });
  const codes = [];
  let last;
  for (let i = 0; i < 6; i++) {
    last = await app("/via-http/hello", { headers: { "x-key": o.key } });
    codes.push(last.status);
  }
  assert.deepEqual(codes, [200, 200, 200, 200, 200, 429]);
  assert.equal((await last.json())["violated-policies"][0], "requests-minute");
  assert.ok(last.headers.get("ratelimit") && last.headers.get("retry-after"));
  const direct = await (await app("/http/check", { method: "POST", headers: { "x-key": o.key }, body: { meter: "requests" } })).json();
  const rpcd = await rpc("check", o.id, { meter: "requests" });
  assert.deepEqual([direct.status, direct.body.allowed, direct.body.status], [rpcd.status, rpcd.body.allowed, rpcd.body.status]);
  assert.deepEqual(direct.body.problem, rpcd.body.problem, "one refusal, whichever way it was asked");
  const forged = await app("/via-http/hello", { headers: { "x-key": o.key.replace(/.$/, (c) => (c === "0" ? "1" : "0")) } });
  assert.equal(forged.status, 401, "a wrong key is quotagate's 401, passed on");
});

test("a race for the last units through RPC admits exactly the limit", async () => {
  const o = await fx.api.newOrg("race-rpc", {
    prefix: "race",
    limits: [{ meter: "requests", limit: 20, period: "month" }, { meter: "ai_tokens", limit: 10, period: "month" }],
  });
  const statuses = await Promise.all(Array.from({ length: 60 }, () => app("/api/hello", { org: o.id }).then((r) => r.status)));
  assert.deepEqual([statuses.filter((s) => s === 200).length, statuses.filter((s) => s === 429).length], [20, 40]);
  assert.equal(await fx.api.used(o.id, "requests-month"), 20);
});

test("RPC: idempotent records, and reservations committed and released with the HTTP API's answers", async () => {
  const o = await fx.api.newOrg("rpc", { prefix: "rpc", limits: LIMITS });
  const events = { events: [{ id: "e1", meter: "ai_tokens", quantity: 5 }, { id: "e2", meter: "ai_tokens", quantity: 6 }] };
  const first = await rpc("record", o.id, events);
  assert.equal(first.status, 200);
  assert.deepEqual(first.body.results.map((r) => r.status), ["accepted", "accepted"]);
  const again = await rpc("record", o.id, events);
  assert.deepEqual(again.body.results.map((r) => r.status), ["duplicate", "duplicate"]);
  assert.equal(await fx.api.used(o.id, "ai_tokens-month"), 11, "counted once");
  const viaHttp = await fx.api.call("POST", "/_quota/v1/events", { key: o.key, body: events });
  assert.deepEqual(viaHttp.json, again.body, "the HTTP API answers the same");

  const reserved = await rpc("reserve", o.id, { meter: "ai_tokens", quantity: 100 });
  assert.equal(reserved.status, 200);
  assert.equal(reserved.body.allowed, true);
  assert.ok(reserved.headers.ratelimit, "the RateLimit fields come back to send on");
  const id = reserved.body.reservation.id;
  const committed = await rpc("commit", o.id, { quantity: 80 }, id);
  assert.equal(committed.status, 200, JSON.stringify(committed));
  assert.equal(await fx.api.used(o.id, "ai_tokens-month"), 91);
  const twice = await rpc("commit", o.id, {}, id);
  assert.equal(twice.status, 404, "a reservation settles once");

  const held = await rpc("reserve", o.id, { meter: "ai_tokens", quantity: 50 });
  assert.equal(await fx.api.used(o.id, "ai_tokens-month"), 141, "reserved units are in use");
  const released = await rpc("release", o.id, undefined, held.body.reservation.id);
  assert.equal(released.status, 200);
  assert.equal(await fx.api.used(o.id, "ai_tokens-month"), 91, "released units are back");

  // The same refusal detail as the HTTP API's /v1/check.
  const over = await rpc("check", o.id, { meter: "ai_tokens", quantity: 5000 });
  const overHttp = await fx.api.call("POST", "/_quota/v1/check", { key: o.key, body: { meter: "ai_tokens", quantity: 5000 } });
  assert.equal(over.body.allowed, false);
  assert.equal(over.body.problem.status, over.body.status);
  assert.ok([402, 429].includes(over.body.status));
  assert.deepEqual(over.body.problem, overHttp.json.problem);
  const usage = await rpc("usage", o.id, { short: true });
  assert.equal(usage.body.org_id, o.id);
  // Bad input is the HTTP API's 400, never a throw.
  const bad = await rpc("check", o.id, { meter: "ai_tokens", quantity: -1 });
  assert.equal(bad.status, 400);
  assert.equal(bad.body.type, "urn:quotagate:problem:invalid-input");
  const badOrg = await rpc("check", "Not An Org", { meter: "ai_tokens" });
  assert.equal(badOrg.status, 400);
});
