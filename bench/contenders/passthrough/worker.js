// Contender (a): a pass-through Worker. It forwards every request to the origin and does nothing
// else: the floor of the runtime (wrangler dev / workerd, one subrequest per request).
export default {
  async fetch(req, env) {
    const url = new URL(req.url);
    if (url.pathname === "/_bench/health") return new Response("ok");
    return fetch(new Request(env.ORIGIN_URL + url.pathname + url.search, req));
  },
};
