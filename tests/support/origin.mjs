// A real HTTP origin for the demo (`make dev`) and the end-to-end tests.
//
// It echoes what reached it (method, path, query, headers, body) as JSON and records every
// request, so tests can assert what the gateway forwarded. Query parameters steer the answer:
//   ?status=503          answer with that status (or the `x-origin-status` request header, which
//                        leaves the query, and so an Idempotency-Key's fingerprint, unchanged)
//   ?usage=ai_tokens:120 add `X-Usage-Ai-Tokens: 120` (post-response metering); repeatable
//   ?delay=50            wait that many ms first
//   ?headers=40          add that many headers of its own (`x-extra-1: 1`, …)
import http from "node:http";
import { pathToFileURL } from "node:url";

export function createOrigin() {
  const requests = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const url = new URL(req.url, "http://origin");
      const body = Buffer.concat(chunks).toString("utf8");
      const seen = { method: req.method, path: url.pathname, query: url.search, headers: req.headers, body };
      requests.push(seen);
      const status = Number(url.searchParams.get("status") ?? req.headers["x-origin-status"] ?? 200);
      const headers = { "content-type": "application/json", "x-origin": "demo" };
      for (const u of url.searchParams.getAll("usage")) {
        const [meter, n] = u.split(":");
        const name = meter.split(/[_-]/).map((w) => w[0].toUpperCase() + w.slice(1)).join("-");
        headers[`x-usage-${name.toLowerCase()}`] = n;
      }
      const answer = () => {
        res.writeHead(status, headers);
        res.end(JSON.stringify({ origin: "demo", ...seen }));
      };
      for (let i = 1; i <= Number(url.searchParams.get("headers") ?? 0); i++) headers[`x-extra-${i}`] = String(i);
      const delay = Number(url.searchParams.get("delay") ?? 0);
      delay > 0 ? setTimeout(answer, delay) : answer();
    });
  });
  // Longer than the gateway keeps idle connections: an origin that closes a pooled connection
  // just as the gateway reuses it turns a good request into a 502 (Node's default is 5 s).
  server.keepAliveTimeout = 65_000;
  return {
    requests,
    server,
    listen(port = 0, host = "127.0.0.1") {
      return new Promise((resolve) => server.listen(port, host, () => resolve(server.address().port)));
    },
    close() {
      server.closeAllConnections?.();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

// `node tests/support/origin.mjs [port]`: the demo origin of `make dev`.
if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const port = Number(process.argv[2] ?? process.env.DEMO_ORIGIN_PORT ?? 8788);
  const origin = createOrigin();
  origin.listen(port).then((p) => console.log(`demo origin listening on http://127.0.0.1:${p}`));
}
