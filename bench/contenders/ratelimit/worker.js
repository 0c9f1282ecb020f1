// Contender (d): the Workers Rate Limiting binding, the runtime's own limiter, keyed by the API
// key. Its limit is far above the load, so every request is checked and forwarded.
export default {
  async fetch(req, env) {
    const url = new URL(req.url);
    if (url.pathname === "/_bench/health") return new Response("ok");
    const key = req.headers.get("x-api-key") ?? "anonymous";
    const { success } = await env.LIMITER.limit({ key });
    if (!success) return new Response("rate limited", { status: 429 });
    return fetch(new Request(env.ORIGIN_URL + url.pathname + url.search, req));
  },
};
