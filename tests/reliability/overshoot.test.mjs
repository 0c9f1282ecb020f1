// Overshoot: 1,000 concurrent requests race for the last 10 units of a hard limit, for several
// orgs at once, round after round (the meter is reset between rounds). Each org's Durable Object
// serialises check-and-reserve, so exactly 10 are admitted per org and round: never one more.
import { test } from "node:test";
import assert from "node:assert/strict";
import { gatewayWithOrigin } from "../support/harness.mjs";
import http from "node:http";
import { record, scaled } from "../support/report.mjs";

const ORGS = scaled(2, 5);
const ROUNDS = scaled(2, 10);
const RACERS = 1000;
const LIMIT = 100;
const LEFT = 10;

const fx = gatewayWithOrigin();

// Many sockets, so the 1,000 requests really are in flight together.
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
function get(url, key) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent, headers: { "x-api-key": key } }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode));
    });
    req.on("error", reject);
  });
}

test(`overshoot: ${RACERS} concurrent requests for the last ${LEFT} units, ${ORGS} orgs × ${ROUNDS} rounds`, async () => {
  await fx.api.plan("overshoot", { limits: [{ meter: "requests", limit: LIMIT, period: "month", mode: "hard" }] });
  const orgs = [];
  for (let i = 0; i < ORGS; i++) {
    const id = `org-over-${i}`;
    await fx.api.org(id, { plan: "overshoot" });
    orgs.push({ id, key: (await fx.api.key(id)).key });
  }
  let admitted = 0;
  let over = 0;
  for (let round = 0; round < ROUNDS; round++) {
    for (const o of orgs) {
      // Spend all but the last LEFT units in one committed reservation.
      const warm = await fx.api.call("POST", "/_quota/v1/check", { key: o.key, body: { meter: "requests", quantity: LIMIT - LEFT, reserve: true } });
      assert.equal(warm.status, 200, warm.text);
      const commit = await fx.api.call("POST", `/_quota/v1/reservations/${warm.json.reservation.id}/commit`, { key: o.key, body: {} });
      assert.equal(commit.status, 200, commit.text);
    }
    const seenBefore = fx.origin.requests.length;
    const racing = orgs.flatMap((o) => Array.from({ length: RACERS }, (_, i) => get(`${fx.gw.url}/over/${round}/${i}`, o.key).then((s) => [o.id, s])));
    const results = await Promise.all(racing);
    for (const o of orgs) {
      const mine = results.filter(([id]) => id === o.id).map(([, s]) => s);
      const ok = mine.filter((s) => s === 200).length;
      const refused = mine.filter((s) => s === 429).length;
      const why = () => fx.gw.logs().split("\n").filter((l) => /origin unreachable|error/i.test(l)).slice(-3).join("\n");
      assert.equal(ok + refused, RACERS, `round ${round} ${o.id}: only 200 and 429, got ${JSON.stringify(mine.filter((s) => s !== 200 && s !== 429).slice(0, 5))}\n${why()}`);
      admitted += ok;
      over += Math.max(0, ok - LEFT);
      assert.equal(ok, LEFT, `round ${round} ${o.id}: admitted ${ok}`);
      assert.equal(await fx.api.used(o.id, "requests-month"), LIMIT, `round ${round} ${o.id}: counter`);
    }
    assert.equal(fx.origin.requests.length - seenBefore, LEFT * ORGS, "the origin saw exactly the admitted requests");
    for (const o of orgs) {
      const r = await fx.api.admin("POST", `/orgs/${o.id}/reset`, { meter: "requests" });
      assert.equal(r.status, 200, r.text);
    }
  }
  record(
    "Overshoot at a hard limit",
    `${RACERS} concurrent requests for the last ${LEFT} units, ${ORGS} orgs at once, ${ROUNDS} rounds (${RACERS * ORGS * ROUNDS} requests)`,
    `${admitted} admitted of ${LEFT * ORGS * ROUNDS} allowed: ${over} over the limit`,
  );
  assert.equal(over, 0);
});
