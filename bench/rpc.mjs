// `make bench-rpc`: the latency quotagate adds to a Worker that asks it for a decision, at
// concurrency 1, through its service binding (Workers RPC to `QuotaService`) and through its HTTP
// API, in the same run on the same host. The caller is the TypeScript API Worker of the e2e test
// (tests/e2e/workers/app.ts); each path is timed from this process, and the baseline is the same
// Worker answering without asking quotagate, so "added" is path − baseline.
// Prints a table and writes target/bench-rpc.json.
import fs from "node:fs";
import path from "node:path";
import { startGateway, ROOT } from "../tests/support/gateway.mjs";
import { client } from "../tests/support/client.mjs";
import { boundWorkers } from "../tests/support/workers.mjs";

const N = Number(process.env.BENCH_RPC_N ?? 2000);
const WARM = 200;
const gw = await startGateway({ logs: "warn", vars: { DECISION_LOG: "off", USAGE_API_CALLS_PER_MINUTE: "0" }, ...boundWorkers() });
try {
  const api = client(gw.url);
  const o = await api.newOrg("bench-rpc", { id: "bench-rpc", limits: [{ meter: "requests", limit: 1_000_000_000, period: "month" }] });
  const app = gw.workers.app;
  const paths = {
    baseline: () => fetch(`${app}/noop`),
    rpc: () => fetch(`${app}/rpc/check`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ org: o.id, args: { meter: "requests" } }) }),
    http: () => fetch(`${app}/http/check`, { method: "POST", headers: { "content-type": "application/json", "x-key": o.key }, body: JSON.stringify({ meter: "requests" }) }),
  };
  const times = Object.fromEntries(Object.keys(paths).map((k) => [k, []]));
  // Interleaved, so a slow moment of the machine is shared by all three paths.
  for (let i = 0; i < WARM + N; i++) {
    for (const [name, call] of Object.entries(paths)) {
      const t0 = performance.now();
      const r = await call();
      await r.arrayBuffer();
      if (r.status !== 200) throw new Error(`${name}: ${r.status}`);
      if (i >= WARM) times[name].push(performance.now() - t0);
    }
  }
  const q = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))];
  const stats = Object.fromEntries(Object.entries(times).map(([k, xs]) => [k, { p50: q(xs, 0.5), p90: q(xs, 0.9), p99: q(xs, 0.99) }]));
  const added = (k) => ({ p50: stats[k].p50 - stats.baseline.p50, p90: stats[k].p90 - stats.baseline.p90, p99: stats[k].p99 - stats.baseline.p99 });
  const result = { n: N, stats, added: { rpc: added("rpc"), http: added("http") }, ratio_p50: added("rpc").p50 / added("http").p50 };
  const ms = (x) => x.toFixed(3).padStart(8);
  console.log(`quotagate from a Worker, concurrency 1, ${N} calls each (ms)`);
  console.log("path                            p50      p90      p99");
  for (const [k, label] of [["baseline", "the Worker alone"], ["rpc", "check via service binding"], ["http", "check via HTTP API"]]) {
    console.log(`${label.padEnd(28)}${ms(stats[k].p50)} ${ms(stats[k].p90)} ${ms(stats[k].p99)}`);
  }
  for (const k of ["rpc", "http"]) console.log(`added by ${k.padEnd(19)}${ms(result.added[k].p50)} ${ms(result.added[k].p90)} ${ms(result.added[k].p99)}`);
  console.log(`RPC's added p50 ÷ HTTP's: ${result.ratio_p50.toFixed(2)}`);
  fs.mkdirSync(path.join(ROOT, "target"), { recursive: true });
  fs.writeFileSync(path.join(ROOT, "target/bench-rpc.json"), JSON.stringify(result, null, 1));
} finally {
  await gw.stop();
}
