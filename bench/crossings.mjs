// `make crossings`: how many times a proxied request crosses between the Rust wasm and
// JavaScript, for each path a request can take:
// - strict: a plan with `"lease": false`, every request decided by the org's DO;
// - leased: the default plan, once the key holds a lease (no DO call per request);
// - refused: an org over its hard limit, answered from the isolate's refusal memory.
// Counted, not sampled, on a copy of the bundle whose glue counts every import and export
// (tests/support/crossings.mjs). The Worker and the org's DO run in the same isolate here, so a
// strict request's count holds both sides of the DO call. Prints a table and writes
// target/crossings.json; `make bench` runs it too (results.json `crossings`).
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { startGateway, ROOT } from "../tests/support/gateway.mjs";
import { client } from "../tests/support/client.mjs";
import { createOrigin } from "../tests/support/origin.mjs";
import { countingBundle, takeCrossings, crossed } from "../tests/support/crossings.mjs";

const N = Number(process.env.CROSSINGS_N ?? 200);

/** Counts per request on each path, against a gateway started here (DECISION_LOG=all). */
export async function crossings({ n = N } = {}) {
  const origin = createOrigin();
  const originPort = await origin.listen();
  const gw = await startGateway({ logs: "warn", script: await countingBundle(), vars: { ORIGIN_URL: `http://127.0.0.1:${originPort}` } });
  try {
    const api = client(gw.url);
    const month = (limit) => [{ meter: "requests", limit, period: "month", mode: "hard" }];
    await api.plan("x-strict", { limits: month(1_000_000_000), lease: false });
    await api.plan("x-default", { limits: month(1_000_000_000) });
    await api.plan("x-tiny", { limits: month(1) });
    const keys = {};
    for (const [org, plan] of [["x-strict", "x-strict"], ["x-leased", "x-default"], ["x-refused", "x-tiny"]]) {
      await api.org(org, { plan });
      keys[org] = (await api.key(org)).key;
    }
    const get = async (key, want) => {
      const r = await fetch(`${gw.url}/v1/things`, { headers: { "x-api-key": key } });
      await r.arrayBuffer();
      if (want && r.status !== want) throw new Error(`crossings: expected ${want}, got ${r.status}`);
      return r;
    };
    const counts = () => takeCrossings(gw.url);
    const out = {};
    for (const [name, org, want, source] of [["strict", "x-strict", 200, "proxy"], ["leased", "x-leased", 200, "lease"], ["refused", "x-refused", 429, "recall"]]) {
      // Warm: the isolate has its settings, the key its lease (or its remembered refusal).
      for (let i = 0; i < 20; i++) await get(keys[org]);
      await new Promise((r) => setTimeout(r, 200)); // the warm-up's settling, off the count
      await counts();
      for (let i = 0; i < n; i++) await get(keys[org], want);
      // The settling a request leaves to waitUntil belongs to it: give it time to finish.
      await new Promise((r) => setTimeout(r, 200));
      const c = await counts();
      out[name] = {
        requests: n,
        decided_by: source,
        wasm_to_js: crossed(c, "wasm→js") / n,
        js_to_wasm: crossed(c, "js→wasm") / n,
        top: Object.entries(c)
          .sort((a, b) => b[1] - a[1])
          .slice(0, 20)
          // The hash suffix changes with every build; the name before it says what was called.
          .map(([k, v]) => ({ name: k.replace(/_[0-9a-f]{16}$/, ""), per_request: v / n })),
      };
    }
    return out;
  } finally {
    await gw.stop();
    await origin.close();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const out = await crossings();
  fs.mkdirSync(path.join(ROOT, "target"), { recursive: true });
  fs.writeFileSync(path.join(ROOT, "target/crossings.json"), JSON.stringify(out, null, 2));
  console.log("| path | wasm → JS per request | JS → wasm per request |\n|---|--:|--:|");
  for (const [k, v] of Object.entries(out)) console.log(`| ${k} | ${v.wasm_to_js.toFixed(1)} | ${v.js_to_wasm.toFixed(1)} |`);
  for (const [k, v] of Object.entries(out)) console.log(`\n${k}: ${v.top.map((t) => `${t.name} ${t.per_request.toFixed(2)}`).join(", ")}`);
}
