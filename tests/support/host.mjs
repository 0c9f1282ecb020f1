// The faithful local runtime, for the tests and the benchmarks alike: one Worker bundle (as
// `wrangler deploy --dry-run --outdir` writes it) in workerd through the Miniflare API, reached on
// a direct socket. No wrangler dev proxy, no proxy Durable Object, no inspector: what a request
// does and costs here is what the Worker does and costs. Durable Objects are SQLite-backed and D1 is local, persisted under the
// spec's directory (the same layout `wrangler d1 migrations apply --persist-to` writes).
//
// Usage: node tests/support/host.mjs SPEC.json (tests/support/gateway.mjs writes it), where SPEC is
//   { name, script, port, persist?, vars?, durableObjects?: {BINDING: "Class"},
//     d1?: {BINDING: "database_id"}, ratelimits?: {BINDING: {simple: {limit, period}}},
//     inspectorPort?, replicas?: [port, …], compatibilityDate?,
//     services?: {BINDING: {name, entrypoint?}}, workers?: [{name, script, port, vars?, services?}] }
// `services` binds the first Worker to other Workers of the host (the origin as a service);
// `workers` are those other Workers, each one ES module (no wasm) on a socket of its own, with
// its own service bindings (a Worker that calls quotagate's QuotaService entrypoint).
// `replicas` runs more copies of the same Worker, each its own isolate on its own socket, all
// bound to the first one's Durable Object namespace and the same D1: several isolates serving
// one org, as several Cloudflare locations would (the lease mode's end-to-end test).
// It prints "READY <url> [<replica url> …]" once the sockets answer, then "ENTRY <url>": Miniflare's
// own entry socket, which serves /cdn-cgi/local/scheduled (the cron trigger) for the first Worker.
// It runs until killed; SIGTERM disposes of the runtime first.
import fs from "node:fs";
import path from "node:path";
import { convertV4MiniflareOptions, Log, LogLevel, Miniflare } from "miniflare";

const spec = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const persist = spec.persist ? path.resolve(spec.persist, "v3") : undefined;
const durableObjects = Object.fromEntries(
  Object.entries(spec.durableObjects ?? {}).map(([binding, className]) => [binding, { className, useSQLite: true }]),
);
const worker = (name, port, objects) => ({
  name,
  // The entry module first, then every other module the bundle holds beside it, named
  // relative to the bundle's directory as its imports name them.
  modulesRoot: path.dirname(path.resolve(spec.script)),
  modules: [
    { type: "ESModule", path: path.resolve(spec.script) },
    ...fs
      .readdirSync(path.dirname(path.resolve(spec.script)))
      .filter((f) => f.endsWith(".wasm"))
      .map((f) => ({ type: "CompiledWasm", path: path.join(path.dirname(path.resolve(spec.script)), f) })),
  ],
  compatibilityDate: spec.compatibilityDate ?? "2026-10-01",
  bindings: spec.vars ?? {},
  durableObjects: objects,
  d1Databases: spec.d1 ?? {},
  ratelimits: spec.ratelimits,
  serviceBindings: spec.services ?? {},
  unsafeDirectSockets: [{ host: "127.0.0.1", port }],
});
const others = (spec.workers ?? []).map((w) => ({
  name: w.name,
  modules: [{ type: "ESModule", path: path.resolve(w.script) }],
  modulesRoot: path.dirname(path.resolve(w.script)),
  compatibilityDate: spec.compatibilityDate ?? "2026-10-01",
  // "$GATEWAY_URL" in a var is the first Worker's own address (known only here).
  bindings: Object.fromEntries(Object.entries(w.vars ?? {}).map(([k, v]) => [k, v === "$GATEWAY_URL" ? `http://127.0.0.1:${spec.port}` : v])),
  serviceBindings: w.services ?? {},
  unsafeDirectSockets: [{ host: "127.0.0.1", port: w.port }],
}));
// A replica reaches the same Durable Object classes through the first Worker's namespace.
const shared = Object.fromEntries(
  Object.entries(durableObjects).map(([binding, d]) => [binding, { ...d, scriptName: spec.name }]),
);
const replicas = (spec.replicas ?? []).map((port, i) => worker(`${spec.name}-replica-${i + 1}`, port, shared));
// workerd writes every console line to its stdout as structured JSON, which Miniflare parses
// here. By default this host prints only warnings and errors: re-printing each decision log line
// would add two more processes' work per request (this one's write and its reader's), which no
// deployed Worker pays, on the same cores as the contender. HOST_LOGS=all prints every line.
const printAll = process.env.HOST_LOGS === "all";
const handleStructuredLogs = ({ level, message }) => {
  if (level === "error" || level === "warn") console.error(message);
  else if (printAll) console.log(message);
};
const mf = new Miniflare(convertV4MiniflareOptions({
  log: new Log(LogLevel[process.env.HOST_LOG_LEVEL ?? "WARN"]),
  handleStructuredLogs,
  workers: [worker(spec.name, spec.port, durableObjects), ...replicas, ...others],
  // The layout wrangler uses for --persist-to DIR (DIR/v3/<plugin>), so migrations applied with
  // wrangler are the ones this runtime sees.
  resourcePersistencePath: persist,
  // No Request.cf download (there is no network here, and nothing reads it).
  cf: false,
  // /cdn-cgi/local/scheduled on the entry socket: the tests fire the cron handler through it.
  unsafeTriggerHandlers: true,
  // Only for a profiling host: a benchmark host runs with no inspector.
  ...(spec.inspectorPort ? { inspectorPort: spec.inspectorPort } : {}),
}));
const entry = await mf.ready;
const urls = [await mf.unsafeGetDirectURL(spec.name)];
for (const r of replicas) urls.push(await mf.unsafeGetDirectURL(r.name));
for (const w of others) console.log(`WORKER ${w.name} ${(await mf.unsafeGetDirectURL(w.name)).href}`);
console.log(`READY ${urls.map((u) => u.href).join(" ")}`);
console.log(`ENTRY ${entry.href}`);
const stop = async () => {
  await mf.dispose().catch(() => {});
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
