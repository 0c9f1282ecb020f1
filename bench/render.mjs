// Renders bench/RESULTS.md from bench/results.json (`make bench`) and bench/reliability.json
// (`make reliability`, full run). Either file may be missing; what is missing is said so.
//
//   node bench/render.mjs [dir]
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const read = (f) => (fs.existsSync(f) ? JSON.parse(fs.readFileSync(f, "utf8")) : null);
const x = (r) => `${r.toFixed(2)}×`;
const ms = (v) => v.toFixed(2);

function perf(r) {
  const m = r.machine;
  const s = r.settings;
  const lines = [
    `## Performance (one run: ${m.date}, commit ${m.commit})`,
    "",
    `Machine: ${m.cpu}, ${m.cores} cores, ${m.memory_gib} GiB, ${m.kernel}. Node ${m.node}, wrangler ${m.wrangler}, workerd ${m.workerd}, ${m.rustc}, ${m.redis}, ${m.wrk}.`,
    "",
    `Load: ${s.load}, ${s.connections} connections, ${s.warmup_s} s warm-up then ${s.duration_s} s measured, ${s.rounds} interleaved rounds; each figure is the median of the rounds. Everything (load generator, contender, origin) shares the same ${m.cores} cores on loopback.`,
    "",
    "| contender | req/s | p50 ms | p99 ms | p99.9 ms | req/s vs (a) | req/s vs (b) | p99 vs (a) | p99 vs (b) | non-2xx |",
    "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
  ];
  for (const h of r.http) {
    lines.push(
      `| ${h.name} | ${h.rps} | ${ms(h.p50_ms)} | ${ms(h.p99_ms)} | ${ms(h.p999_ms)} | ${x(h.vs_a.rps)} | ${x(h.vs_b.rps)} | ${x(h.vs_a.p99)} | ${x(h.vs_b.p99)} | ${h.non_2xx} |`,
    );
  }
  const by = Object.fromEntries(r.http.map((h) => [h.id, h]));
  lines.push("", "Per-round requests/s (spread between rounds shows the machine's noise):", "");
  for (const h of r.http) lines.push(`- ${h.id}: ${h.rounds.map((q) => q.rps).join(", ")}`);
  if (by.c1 && by.e) {
    const q = [by.c1, by.c5].filter(Boolean);
    const row = (label, k) => `| ${label} | ${q.map((h) => `${x(h[k].rps)} | ${x(h[k].p99)}`).join(" | ")} |`;
    lines.push(
      "",
      "### The ratios that matter",
      "",
      `| quotagate, one hot org, against | ${q.map((h) => (h.id === "c1" ? "req/s (as shipped) | p99 (as shipped)" : "req/s (DECISION_LOG=refusals) | p99 (DECISION_LOG=refusals)")).join(" | ")} |`,
      `|---|${q.map(() => "--:|--:").join("|")}|`,
      row("(a) pass-through Worker", "vs_a"),
      row("(b) minimal DO counter", "vs_b"),
      row("(e) Node + Redis limiter", "vs_e"),
    );
  }
  lines.push(
    "",
    "### Where the CPU goes (µs of CPU per request, median of rounds)",
    "",
    "Read from /proc: utime + stime of each contender's processes over the measured seconds, divided by its requests. `node` under a Worker is wrangler's local proxy in front of workerd; `origin` is the shared origin's share.",
    "",
    "| contender | workerd | node (wrangler / server) | redis | origin |",
    "|---|--:|--:|--:|--:|",
  );
  for (const h of r.http) {
    const c = h.cpu_us_per_request;
    lines.push(`| ${h.id} | ${c.workerd ?? "–"} | ${c.node ?? "–"} | ${c.redis ?? "–"} | ${c.origin ?? "–"} |`);
  }
  if (r.profile && Object.keys(r.profile).length) {
    const ids = Object.keys(r.profile);
    const cats = [...new Set(ids.flatMap((id) => Object.keys(r.profile[id].categories)))];
    lines.push(
      "",
      "### Where the time goes inside the Worker isolate (V8 CPU profile under the same load)",
      "",
      `| share of the isolate's time | ${ids.map((id) => by[id]?.name ?? id).join(" | ")} |`,
      `|---|${ids.map(() => "--:").join("|")}|`,
    );
    for (const c of cats) {
      lines.push(`| ${c} | ${ids.map((id) => `${((r.profile[id].categories[c]?.share ?? 0) * 100).toFixed(1)}%`).join(" | ")} |`);
    }
    lines.push(`| req/s while profiled | ${ids.map((id) => r.profile[id].rps_while_profiled).join(" | ")} |`);
    for (const id of ids) {
      lines.push("", `Top self-time frames, ${id}: ${r.profile[id].top.slice(0, 8).map((t) => `${t.name.replace(/\|/g, "/").slice(0, 70)} ${(t.share * 100).toFixed(1)}%`).join("; ")}.`);
    }
  }
  if (r.quotagate_counted) {
    lines.push(
      "",
      `Counted under load (one hot org): in each round the org's counter grew by ${r.quotagate_counted.map((q) => `${q.counted} for ${q.wrk_requests} completed requests`).join("; ")} (at most one in-flight request per connection more is allowed): ${r.quotagate_counted.every((q) => q.exact) ? "exact every round" : "**MISMATCH**"}.`,
    );
  }
  const l = r.ledger;
  const z = r.size;
  const c = r.criterion;
  lines.push(
    "",
    "### Ledger, size, native decision cost",
    "",
    "| figure | value |",
    "|---|--:|",
    `| ledger flush throughput (${l.flush.events} queued events, one drain) | ${l.flush.events_per_s} events/s (${l.flush.ms} ms) |`,
    `| lag from commit to D1, p50 / p99 / max (${l.lag_ms.events} events) | ${l.lag_ms.p50} / ${l.lag_ms.p99} / ${l.lag_ms.max} ms |`,
    `| wasm, raw / gzip -9 | ${(z.wasm_bytes / 1024).toFixed(0)} KiB / ${(z.wasm_gzip_bytes / 1024).toFixed(0)} KiB |`,
    `| JS glue, gzip -9 | ${(z.js_gzip_bytes / 1024).toFixed(1)} KiB |`,
    `| one policy decision, native (criterion mean, 95% CI) | ${(c.decision.mean_ns / 1000).toFixed(2)} µs (${(c.decision.low_ns / 1000).toFixed(2)}–${(c.decision.high_ns / 1000).toFixed(2)}) |`,
    `| floor: one map lookup + increment | ${c.floor.mean_ns.toFixed(1)} ns (decision = ${c.ratio_to_floor.toFixed(0)}× floor) |`,
  );
  return lines.join("\n");
}

function reliability(r) {
  const lines = [
    `## Reliability (\`make reliability\`, ${r.scale} run: ${r.date}, commit ${r.commit})`,
    "",
    "| check | what ran | result |",
    "|---|---|---|",
  ];
  for (const c of r.checks) lines.push(`| ${c.check} | ${c.ran} | ${c.result} |`);
  return lines.join("\n");
}

export function render(dir) {
  const r = read(path.join(dir, "results.json"));
  const rel = read(path.join(dir, "reliability.json"));
  const parts = [
    "# quotagate: benchmark and reliability results",
    "",
    "Generated by `bench/render.mjs` from `results.json` (`make bench`) and `reliability.json` (`make reliability`). How to read them: [README.md](README.md).",
    "",
    r ? perf(r) : "## Performance\n\nNot run yet: `make bench`.",
    "",
    rel ? reliability(rel) : "## Reliability\n\nNot run yet: `make reliability`.",
    "",
  ];
  fs.writeFileSync(path.join(dir, "RESULTS.md"), parts.join("\n"));
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  render(path.resolve(process.argv[2] ?? path.dirname(fileURLToPath(import.meta.url))));
}
