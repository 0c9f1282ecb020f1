// A V8 CPU profile of a running `wrangler dev` Worker, taken through its DevTools inspector while
// wrk loads it: self time by function, summed, so a report can say where the time goes.
//
//   import { profileWhile } from "./profile.mjs";
//   const top = await profileWhile(inspectorPort, async () => runLoad());
import WebSocket from "ws";

export async function profileWhile(inspectorPort, load, { top = 25 } = {}) {
  const targets = await (await fetch(`http://127.0.0.1:${inspectorPort}/json`, { signal: AbortSignal.timeout(10_000) })).json();
  const target = targets.find((t) => t.webSocketDebuggerUrl) ?? targets[0];
  // wrangler's inspector proxy only takes local or DevTools origins.
  const ws = new WebSocket(target.webSocketDebuggerUrl, { headers: { Origin: "http://127.0.0.1" } });
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
    setTimeout(() => reject(new Error("inspector: no connection in 10 s")), 10_000).unref();
  });
  let id = 0;
  const pending = new Map();
  // A dropped inspector connection fails the calls in flight instead of the whole process.
  const fail = (e) => {
    for (const [, settle] of pending) settle({ error: { message: String(e?.message ?? e) } });
    pending.clear();
  };
  ws.on("error", fail);
  ws.on("close", () => fail("inspector connection closed"));
  ws.on("message", (data) => {
    const msg = JSON.parse(data.toString());
    if (msg.id && pending.has(msg.id)) {
      pending.get(msg.id)(msg);
      pending.delete(msg.id);
    }
  });
  const send = (method, params = {}) =>
    new Promise((resolve, reject) => {
      const n = ++id;
      pending.set(n, (msg) => (msg.error ? reject(new Error(`${method}: ${msg.error.message}`)) : resolve(msg)));
      setTimeout(() => {
        if (pending.delete(n)) reject(new Error(`${method}: no answer in 30 s`));
      }, 30_000).unref();
      ws.send(JSON.stringify({ id: n, method, params }), (e) => e && fail(e));
    });
  await send("Profiler.enable");
  await send("Profiler.setSamplingInterval", { interval: 200 });
  await send("Profiler.start");
  let loadResult;
  let stopped;
  try {
    loadResult = await load();
  } finally {
    stopped = await send("Profiler.stop").finally(() => ws.close());
  }
  const profile = stopped.result?.profile;
  if (!profile) throw new Error(`no profile: ${JSON.stringify(stopped).slice(0, 300)}`);
  // Self time per sample: timeDeltas[i] belongs to samples[i].
  const byNode = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map();
  let total = 0;
  profile.samples.forEach((nodeId, i) => {
    const dt = profile.timeDeltas[i] ?? 0;
    const node = byNode.get(nodeId);
    const f = node.callFrame;
    const url = f.url ? f.url.split("/").pop() : "";
    const where = url && !f.functionName ? `:${f.lineNumber + 1}:${f.columnNumber + 1}` : "";
    const name = `${f.functionName || "(anonymous)"}${url ? ` [${url}${where}]` : ""}`;
    self.set(name, (self.get(name) ?? 0) + dt);
    total += dt;
  });
  const rows = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, top);
  const categories = {};
  for (const [name, us] of self) {
    const c = category(name);
    categories[c] = (categories[c] ?? 0) + us;
  }
  return {
    total_ms: total / 1000,
    categories: Object.fromEntries(
      Object.entries(categories)
        .sort((a, b) => b[1] - a[1])
        .map(([c, us]) => [c, { ms: us / 1000, share: us / total }]),
    ),
    top: rows.map(([name, us]) => ({ name, ms: us / 1000, share: us / total })),
    load: loadResult,
  };
}

/** Which layer a profiled frame belongs to. */
function category(name) {
  if (name === "(idle)") return "idle (isolate waiting on I/O)";
  if (name === "(garbage collector)") return "garbage collector";
  if (name === "(program)") return "V8 / runtime outside JS (program)";
  // Named frames carry the module's URL (`[quotagate.wasm-…]`); a wasm without its names section
  // shows `wasm-function[N]`.
  if (/\.wasm/.test(name) || /^(wasm-function\[|wasm-to-js|js-to-wasm)/.test(name)) return "Rust compiled to wasm";
  if (/\[(shim|index|worker|entry)\.js/.test(name)) return "JavaScript (the Worker's own, or wasm-bindgen glue)";
  return "runtime APIs (SQLite exec, fetch, Request/Response, streams, JSON, microtasks)";
}
