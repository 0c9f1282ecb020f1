// The Durable Object call latency histogram on /_quota/admin/metrics: every DO call the Worker
// makes is one sample, handed from the isolate to D1 (METRICS_FLUSH_SECS=0: after every
// request), and samples whose hand-over met a D1 outage are kept and sent with the next one.
import { test } from "node:test";
import assert from "node:assert/strict";
import { gatewayWithOrigin } from "../support/harness.mjs";
import { lockLedger } from "../support/gateway.mjs";
import { eventually, ADMIN_TOKEN } from "../support/client.mjs";

const fx = gatewayWithOrigin({ METRICS_FLUSH_SECS: "0" }, async ({ api }) => {
  // Strict decisions: every proxied request is one DO call (leases would skip some).
  await api.plan("lat", { limits: [{ meter: "requests", limit: 100000, period: "day" }], lease: false });
});

/** The histogram of one op, parsed from the exposition text. */
async function histogram(op) {
  const m = await fx.api.call("GET", "/_quota/admin/metrics", { token: ADMIN_TOKEN });
  assert.equal(m.status, 200);
  assert.match(m.text, /^# TYPE quotagate_do_call_duration_seconds histogram$/m);
  const buckets = [...m.text.matchAll(new RegExp(`^quotagate_do_call_duration_seconds_bucket\\{op="${op}",le="([^"]+)"\\} (\\d+)$`, "gm"))].map(
    (x) => [x[1], Number(x[2])],
  );
  const count = m.text.match(new RegExp(`^quotagate_do_call_duration_seconds_count\\{op="${op}"\\} (\\d+)$`, "m"));
  const sum = m.text.match(new RegExp(`^quotagate_do_call_duration_seconds_sum\\{op="${op}"\\} (\\d+\\.\\d{3})$`, "m"));
  return { buckets, count: count ? Number(count[1]) : 0, sum: sum ? Number(sum[1]) : null };
}

test("every proxied request's DO call is one latency sample; a D1 outage delays samples, never drops them", async () => {
  await fx.api.org("lat-org", { plan: "lat" });
  const { key } = await fx.api.key("lat-org");
  const send = async (n) => {
    for (let i = 0; i < n; i++) {
      const r = await fetch(`${fx.gw.url}/v1/things`, { headers: { "x-api-key": key } });
      assert.equal(r.status, 200);
      await r.arrayBuffer();
    }
  };
  await send(40);
  let h = await eventually(async () => {
    const x = await histogram("decide");
    return x.count === 40 && x;
  });
  assert.ok(h, `decide samples: ${JSON.stringify(await histogram("decide"))}`);
  assert.equal(h.buckets.length, 12, "11 bounds and +Inf");
  assert.deepEqual(h.buckets.at(-1), ["+Inf", 40]);
  for (let i = 1; i < h.buckets.length; i++) assert.ok(h.buckets[i][1] >= h.buckets[i - 1][1], "cumulative buckets");
  assert.ok(h.sum !== null && h.sum >= 0);

  // D1 is locked: hand-overs fail, the isolate keeps its samples, and the requests still pass.
  const lock = await lockLedger(fx.gw.persistTo);
  await send(25);
  await new Promise((r) => setTimeout(r, 300));
  lock.release();
  await eventually(() => /"msg":"latency hand-over failed"/.test(fx.gw.logs()));
  assert.match(fx.gw.logs(), /"msg":"latency hand-over failed"/);
  // The next request's hand-over carries the kept samples too.
  await send(1);
  h = await eventually(async () => {
    const x = await histogram("decide");
    return x.count === 66 && x;
  });
  assert.ok(h, `decide samples after the outage: ${JSON.stringify(await histogram("decide"))}`);
  assert.deepEqual(h.buckets.at(-1), ["+Inf", 66]);
  assert.equal((await fx.api.call("GET", "/_quota/admin/metrics")).status, 401, "metrics need the admin token");
});
