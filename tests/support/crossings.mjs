// A copy of the deployable bundle that counts its crossings between the Rust wasm and
// JavaScript: its wasm-bindgen glue has every import (wasm → JS) and every export (JS → wasm)
// wrapped in a counter, and its default entrypoint answers the counts at COUNTS_PATH (and resets
// them). Nothing else differs. workerd's inspector keeps V8's precise coverage to itself, so the
// counts are taken in the isolate. Used by `make crossings` (bench/crossings.mjs) and by the
// hot-path test that holds a request's crossings independent of its header count.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { quotagateBundle, entryModule } from "./bundle.mjs";

export const COUNTS_PATH = "/_bench/crossings";

// Runs first in the counting copy: the counters and the wrappers the glue is patched to use.
const PRELUDE = `
globalThis.__qgCount = (() => {
  const calls = new Map();
  const wrap = (dir, name, f) => function (...a) {
    const k = dir + " " + name;
    calls.set(k, (calls.get(k) ?? 0) + 1);
    return f.apply(this, a);
  };
  return {
    calls,
    imports(imports) {
      for (const mod of Object.values(imports)) {
        for (const [name, f] of Object.entries(mod)) if (typeof f === "function") mod[name] = wrap("wasm→js", name, f);
      }
      return imports;
    },
    exports(exports) {
      const out = {};
      for (const [name, v] of Object.entries(exports)) out[name] = typeof v === "function" ? wrap("js→wasm", name, v) : v;
      return out;
    },
  };
})();
`;

/** A copy of the bundle with counted glue; its default entrypoint answers the counts. */
export function countingBundle() {
  return quotagateBundle().then((dir) => {
    const src = path.join(dir, "worker");
    // A directory of this process's own (test files run two at a time), removed at its exit.
    const out = fs.mkdtempSync(path.join(os.tmpdir(), "quotagate-crossings-"));
    process.once("exit", () => fs.rmSync(out, { recursive: true, force: true }));
    fs.cpSync(src, out, { recursive: true });
    const entry = entryModule(out);
    let js = fs.readFileSync(entry, "utf8");
    const patch = (re, to, what) => {
      const n = (js.match(re) ?? []).length;
      if (n === 0) throw new Error(`crossings: the glue has no ${what}; wasm-bindgen's output changed`);
      js = js.replace(re, to);
    };
    patch(/new WebAssembly\.Instance\((\w+), (\w+)\(\)\)/g, "new WebAssembly.Instance($1, globalThis.__qgCount.imports($2()))", "instantiation");
    patch(/(\w+) = (\w+)\.exports\b/g, "$1 = globalThis.__qgCount.exports($2.exports)", "exports binding");
    patch(/\bGateway as default\b/, "CountedGateway as default", "default export");
    js = `${PRELUDE}\n${js}\nclass CountedGateway extends Gateway {
  fetch(request) {
    if (new URL(request.url).pathname !== "${COUNTS_PATH}") return super.fetch(request);
    const body = JSON.stringify(Object.fromEntries(globalThis.__qgCount.calls));
    globalThis.__qgCount.calls.clear();
    return new Response(body, { headers: { "content-type": "application/json" } });
  }
}\n`;
    fs.writeFileSync(entry, js);
    return entry;
  });
}

/** The counts since the last read, by "wasm→js <name>" or "js→wasm <name>", and resets them. */
export async function takeCrossings(gatewayUrl) {
  return (await fetch(`${gatewayUrl}${COUNTS_PATH}`)).json();
}

/** The total of `counts` in one direction ("wasm→js" or "js→wasm"). */
export function crossed(counts, dir) {
  return Object.entries(counts)
    .filter(([k]) => k.startsWith(dir))
    .reduce((t, [, v]) => t + v, 0);
}
