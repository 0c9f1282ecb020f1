// Flush lag: how long admitted usage takes to reach D1 under steady traffic, with the default
// LEDGER_FLUSH_SECS. One org, one proxied request every 100 ms for 95 s; D1's hourly bucket is
// polled every 100 ms, and each request's lag is the first poll that shows it minus its admission.
// Usage: node bench/flushlag.mjs   (after `make build`; prints JSON)
import { startGateway, ledgerQuery } from "../tests/support/gateway.mjs";
import { createOrigin } from "../tests/support/origin.mjs";
import { client } from "../tests/support/client.mjs";

const origin = createOrigin();
const port = await origin.listen();
const gw = await startGateway({ vars: { ORIGIN_URL: `http://127.0.0.1:${port}` } });
const api = client(gw.url);
try {
  await api.plan("lag", { limits: [{ meter: "requests", limit: null, period: "month" }] });
  await api.org("lag", { plan: "lag" });
  const { key } = await api.key("lag");
  const admitted = [];
  const seen = [];
  const until = Date.now() + 95_000;
  const send = (async () => {
    while (Date.now() < until) {
      const r = await api.call("GET", "/x", { key });
      if (r.status === 200) admitted.push(Date.now());
      await new Promise((res) => setTimeout(res, 100));
    }
  })();
  const poll = (async () => {
    while (Date.now() < until + 35_000) {
      const [row] = await ledgerQuery(gw.persistTo, "SELECT COALESCE(SUM(quantity), 0) AS q FROM usage_hourly WHERE org_id = 'lag'");
      seen.push([Date.now(), row.q]);
      await new Promise((res) => setTimeout(res, 100));
    }
  })();
  await Promise.all([send, poll]);
  const lags = admitted.map((t, i) => {
    const hit = seen.find(([, q]) => q >= i + 1);
    return hit ? hit[0] - t : null;
  }).filter((x) => x !== null).sort((a, b) => a - b);
  const pct = (p) => lags[Math.min(lags.length - 1, Math.floor((p / 100) * lags.length))];
  const [marks] = await ledgerQuery(gw.persistTo, "SELECT seq FROM ledger_marks WHERE org_id = 'lag'");
  console.log(JSON.stringify({ requests: admitted.length, measured: lags.length, p50_ms: pct(50), p99_ms: pct(99), max_ms: lags.at(-1), d1_batches: marks?.seq }));
} finally {
  await gw.stop();
  await origin.close();
}
