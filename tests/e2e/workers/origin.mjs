// The origin as a Worker, bound to quotagate as the `ORIGIN` service (no public URL between
// them): it answers like tests/support/origin.mjs, echoing what reached it. `?status=503`
// answers that status; `?usage=ai_tokens:120` adds `X-Usage-Ai-Tokens: 120`.
export default {
  async fetch(request) {
    const url = new URL(request.url);
    const headers = Object.fromEntries(request.headers);
    const body = await request.text();
    const out = { "content-type": "application/json", "x-origin": "worker" };
    for (const u of url.searchParams.getAll("usage")) {
      const [meter, n] = u.split(":");
      out[`x-usage-${meter.replace(/_/g, "-")}`] = n;
    }
    const status = Number(url.searchParams.get("status") ?? 200);
    const seen = { origin: "worker", method: request.method, path: url.pathname, query: url.search, headers, body };
    return new Response(JSON.stringify(seen), { status, headers: out });
  },
};
