// The race: 1,000 concurrent requests for the last 50 units of a hard limit. The org's Durable
// Object serialises check-and-reserve, so exactly 50 are admitted and the counter reads the limit.
import { test } from "node:test";
import assert from "node:assert/strict";
import { gatewayWithOrigin } from "../support/harness.mjs";

const fx = gatewayWithOrigin();

test("1,000 concurrent requests for the last 50 units: exactly 50 admitted", async () => {
  await fx.api.plan("race", { limits: [{ meter: "requests", limit: 100, period: "month", mode: "hard" }] });
  await fx.api.org("org-race", { plan: "race" });
  const { key } = await fx.api.key("org-race");
  // Use the first 50 units sequentially.
  const warm = await fx.api.call("POST", "/_quota/v1/check", { key, body: { meter: "requests", quantity: 50, reserve: true } });
  const commit = await fx.api.call("POST", `/_quota/v1/reservations/${warm.json.reservation.id}/commit`, { key, body: {} });
  assert.equal(commit.status, 200);
  assert.equal(await fx.api.used("org-race", "requests-month"), 50);

  const before = fx.origin.requests.length;
  const results = await Promise.all(
    Array.from({ length: 1000 }, (_, i) =>
      fetch(`${fx.gw.url}/race/${i}`, { headers: { "x-api-key": key } }).then(async (r) => {
        await r.arrayBuffer();
        return r.status;
      }),
    ),
  );
  const counts = results.reduce((m, s) => ((m[s] = (m[s] ?? 0) + 1), m), {});
  console.log(`race: ${JSON.stringify(counts)}`);
  assert.equal(counts[200], 50, JSON.stringify(counts));
  assert.equal(counts[429], 950, JSON.stringify(counts));
  assert.equal(fx.origin.requests.length - before, 50, "the origin saw exactly the admitted requests");
  assert.equal(await fx.api.used("org-race", "requests-month"), 100);
});
