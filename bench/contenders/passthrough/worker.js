// Contender (a): a pass-through Worker. It forwards every request to the origin and does nothing
// else: the floor of the runtime (wrangler dev / workerd, one subrequest per request).
export default {
  async fetch(req, env) {
    const url = new URL(req.url);
    if (url.pathname === "/_bench/health") return new Response("ok");
    // "a+log": the same Worker writing quotagate's decision log line (one preformatted string)
    // per request, so the runtime's own cost of one console line is measured apart.
    if (env.LOG_LINE === "1") {
      console.log(`{"msg":"decision","org":"bench-hot","meter":"requests","quantity":1,"outcome":"allowed","status":200,"source":"proxy","latency_ms":${Date.now() % 4}}`);
    }
    return fetch(new Request(env.ORIGIN_URL + url.pathname + url.search, req));
  },
};
