// The hot path's floor and its headers, end to end in workerd:
// - the org DO's work per proxied request, read from the DO itself (`QUOTA_DEBUG_WORK=1` makes
//   it answer with the statements it ran and SQLite's rows-written count): two row writes under
//   80% of every limit (plus, once per key and day, its last-used day), none for a refusal;
// - a request's crossings between the Rust wasm and JavaScript, counted on a copy of the bundle
//   whose glue counts them: the same for 2 headers as for 60 each way (the header work is one
//   call each way, never one per header);
// - the IETF RateLimit fields parsed with an RFC 9651 parser (npm `structured-headers`), and
//   `t`, `Retry-After`, `X-RateLimit-Reset` and the problem's `reset` agreeing for every kind of
//   period.
import { test } from "node:test";
import assert from "node:assert/strict";
import { parseList, parseItem } from "structured-headers";
import { gatewayWithOrigin } from "../support/harness.mjs";
import { client, eventually } from "../support/client.mjs";
import { startGateway } from "../support/gateway.mjs";
import { countingBundle, takeCrossings, crossed } from "../support/crossings.mjs";

const fx = gatewayWithOrigin({ QUOTA_DEBUG_WORK: "1" });

/**
 * An org with a plan of its own holding `limits`; its key. Strict decisions (`"lease": false`)
 * unless `lease` says otherwise: this file reads the DO's work per request.
 */
const newOrg = async (id, limits, lease = false) => {
  // "default": the plan names no `lease` at all.
  await fx.api.plan(`plan-${id}`, lease === "default" ? { limits } : { limits, lease });
  return (await fx.api.newOrg(`plan-${id}`, { id })).key;
};

function work(r) {
  const w = r.headers.get("x-quota-debug-work");
  assert.ok(w, "the DO reports its work");
  const m = /^statements=(\d+), rows-written=(\d+)$/.exec(w);
  assert.ok(m, w);
  return { statements: Number(m[1]), rows: Number(m[2]) };
}

test("a proxied request costs the org DO at most one read and two row writes; a refusal writes nothing", async () => {
  const key = await newOrg("hp-floor", [
    { meter: "requests", limit: 1000, period: "minute", mode: "hard" },
    { meter: "requests", limit: 100000, period: "month", mode: "hard" },
  ]);
  const seen = [];
  for (let i = 0; i < 30; i++) {
    const r = await fx.api.call("GET", `/v1/things/${i}`, { key });
    assert.equal(r.status, 200);
    seen.push(work(r));
  }
  // The first request also reads the meter's counter row and writes the key's last-used day
  // (once per key and day: one column of one row).
  assert.equal(seen[0].rows, 3, "two rows and the key's last-used day");
  assert.ok(seen[0].statements <= 4, `statements ${seen[0].statements}`);
  // The meter's one counter row and its open ledger bucket (the same row, rewritten: nothing
  // grows per request); after the first request the counter row
  // is the DO's own (it is its single writer), so nothing is read.
  assert.deepEqual(seen.slice(1), Array(29).fill({ statements: 2, rows: 2 }));
  // With an Idempotency-Key, one more row: the key's record.
  const idem = await fx.api.call("GET", "/v1/things/idem", { key, headers: { "idempotency-key": "hp-1" } });
  assert.deepEqual(work(idem), { statements: 4, rows: 3 });
  const replay = await fx.api.call("GET", "/v1/things/idem", { key, headers: { "idempotency-key": "hp-1" } });
  assert.equal(replay.headers.get("idempotent-replayed"), "true");
  assert.equal(work(replay).rows, 0, "a replay counts nothing and writes nothing");

  const small = await newOrg("hp-refuse", [{ meter: "requests", limit: 2, period: "day", mode: "hard" }]);
  for (let i = 0; i < 2; i++) assert.equal((await fx.api.call("GET", "/x", { key: small })).status, 200);
  const refused = await fx.api.call("GET", "/x", { key: small });
  assert.equal(refused.status, 429);
  assert.equal(work(refused).rows, 0);
});

/** Where each of an org's `n` decisions was made, from its decision lines (which the host may
 * print a moment after the response). */
async function decidedBy(org, n) {
  const lines = () => fx.gw.logs().split("\n").filter((l) => l.includes(`"org":"${org}"`) && l.includes('"msg":"decision"'));
  await eventually(() => lines().length >= n, { timeout: 5000 });
  const sources = lines().map((l) => JSON.parse(l.slice(l.indexOf("{"))).source);
  assert.equal(sources.length, n);
  return sources;
}

test("by default a busy key's requests stop reaching the DO after its fourth within 2 s (adaptive leases)", async () => {
  const key = await newOrg("hp-default", [{ meter: "requests", limit: 100000, period: "month", mode: "hard" }], "default");
  for (let i = 0; i < 30; i++) assert.equal((await fx.api.call("GET", `/v1/things/${i}`, { key })).status, 200);
  // Each request's decision line says where it was decided: the DO, or this isolate's lease.
  const sources = await decidedBy("hp-default", 30);
  // Four strict decisions (the fourth carries a lease), then the lease's requests: no DO call.
  assert.ok(sources.slice(0, 4).every((s) => s !== "lease"), sources.join());
  assert.ok(sources.slice(4).filter((s) => s === "lease").length >= 24, sources.join());
  // The lease was counted at its grant: the DO's counter holds at least what was served.
  assert.ok((await fx.api.used("hp-default", "requests-month")) >= 30);
  // A plan with leases off decides every request at the DO.
  const strict = await newOrg("hp-strict", [{ meter: "requests", limit: 100000, period: "month", mode: "hard" }]);
  for (let i = 0; i < 8; i++) assert.equal((await fx.api.call("GET", `/v1/things/${i}`, { key: strict })).status, 200);
  const strictSources = await decidedBy("hp-strict", 8);
  assert.ok(strictSources.every((s) => s !== "lease"), strictSources.join());
});

/** The RateLimit fields of a response, parsed as RFC 9651 lists. */
function rateLimit(r) {
  const items = (name) =>
    Object.fromEntries(parseList(r.headers.get(name)).map(([value, params]) => [value, Object.fromEntries(params)]));
  return { policy: items("ratelimit-policy"), limit: items("ratelimit") };
}

for (const [period, limits, name] of [
  ["a GCRA window (3/minute)", [{ meter: "requests", limit: 3, period: "minute", mode: "hard" }], "requests-minute"],
  ["a day", [{ meter: "requests", limit: 3, period: "day", mode: "hard" }], "requests-day"],
  ["a month", [{ meter: "requests", limit: 3, period: "month", mode: "hard" }], "requests-month"],
]) {
  test(`RateLimit t, Retry-After, X-RateLimit-Reset and the problem's reset agree for ${period}`, async () => {
    const key = await newOrg(`hp-${name}`, limits);
    for (let i = 0; i < 3; i++) {
      const ok = await fx.api.call("GET", "/x", { key });
      assert.equal(ok.status, 200);
      const f = rateLimit(ok);
      assert.equal(f.policy[name].q, 3);
      assert.equal(f.limit[name].r, 2 - i);
      assert.equal(typeof f.limit[name].t, "number");
    }
    const before = Date.now();
    const r = await fx.api.call("GET", "/x", { key });
    const after = Date.now();
    assert.equal(r.status, 429);
    const f = rateLimit(r);
    const t = f.limit[name].t;
    assert.equal(f.limit[name].r, 0);
    assert.ok(Number.isInteger(t) && t > 0, `t=${t}`);
    if (name === "requests-minute") {
      // One unit of 3/minute comes back every 20 s: that is when more quota is available.
      assert.equal(f.policy[name].w, 60);
      assert.ok(t <= 20, `t=${t}`);
    }
    const retry = parseItem(r.headers.get("retry-after"))[0];
    assert.equal(retry, t, "Retry-After is not earlier than t, and no later");
    const reset = Number(r.headers.get("x-ratelimit-reset"));
    assert.ok(reset >= Math.floor(before / 1000) + t - 1 && reset <= Math.ceil(after / 1000) + t, `reset ${reset}, t ${t}`);
    const body = r.json;
    assert.equal(body.status, 429);
    const bodyReset = Date.parse(body.reset) / 1000;
    assert.ok(Math.abs(bodyReset - reset) <= 1, `${body.reset} vs ${reset}`);
  });
}

test("a request crosses between wasm and JavaScript as often with 60 headers each way as with none", async () => {
  // The same gateway on a copy of the bundle that counts its crossings (nothing else differs).
  const gw = await startGateway({ script: await countingBundle(), vars: { ORIGIN_URL: `http://127.0.0.1:${fx.origin.server.address().port}` } });
  try {
    const api = client(gw.url);
    // Strict: every request takes the same path through the DO, so the counts are exact.
    await api.plan("crossings", { limits: [{ meter: "requests", limit: 1_000_000, period: "month", mode: "hard" }], lease: false });
    const { key } = await api.newOrg("crossings", { id: "crossings" });
    const many = Object.fromEntries(Array.from({ length: 60 }, (_, i) => [`x-client-${i}`, `v${i}`]));
    const run = async (headers, query) => {
      for (let i = 0; i < 3; i++) await (await fetch(`${gw.url}/v1/things${query}`, { headers: { "x-api-key": key, ...headers } })).arrayBuffer();
      await takeCrossings(gw.url);
      const n = 20;
      for (let i = 0; i < n; i++) {
        const r = await fetch(`${gw.url}/v1/things${query}`, { headers: { "x-api-key": key, ...headers } });
        const body = await r.json();
        assert.equal(r.status, 200);
        if (query) {
          // Everything still arrives: the client's headers at the origin, the origin's at the client.
          assert.equal(body.headers["x-client-59"], "v59");
          assert.equal(r.headers.get("x-extra-60"), "60");
          assert.ok(r.headers.get("ratelimit"), "the gateway's own headers are added");
        }
      }
      const c = await takeCrossings(gw.url);
      return { toJs: crossed(c, "wasm→js") / n, toWasm: crossed(c, "js→wasm") / n };
    };
    const few = await run({}, "");
    const lots = await run(many, "?headers=60");
    assert.ok(few.toJs > 10, `the counts are read (${few.toJs} wasm → JS calls a request)`);
    assert.deepEqual(lots, few, "60 more headers each way add no crossing");
  } finally {
    await gw.stop();
  }
});
