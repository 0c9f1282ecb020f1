// Contender (b): the smallest strictly consistent design. One SQLite-backed Durable Object per
// API key increments one durable number (a single UPSERT) before the Worker forwards to the
// origin. It checks no limit and writes no ledger: the floor for any design that decides in a DO.
import { DurableObject } from "cloudflare:workers";

export class Counter extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    ctx.storage.sql.exec("CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)");
  }
  increment() {
    return this.ctx.storage.sql
      .exec("INSERT INTO counter (id, n) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET n = n + 1 RETURNING n")
      .one().n;
  }
}

export default {
  async fetch(req, env) {
    const url = new URL(req.url);
    if (url.pathname === "/_bench/health") return new Response("ok");
    const key = req.headers.get("x-api-key") ?? "anonymous";
    await env.COUNTER.get(env.COUNTER.idFromName(key)).increment();
    return fetch(new Request(env.ORIGIN_URL + url.pathname + url.search, req));
  },
};
