// A real HTTP receiver for webhooks (and other outbound calls) in the end-to-end tests. It
// records every request. The path chooses its behaviour:
//   /ok…          answers 200
//   /fail-N…      answers 500 to the first N attempts of each X-Quota-Webhook-Id, then 200
//   /always-fail… answers 500
import http from "node:http";

export function createReceiver() {
  const requests = [];
  const attempts = new Map();
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      const id = req.headers["x-quota-webhook-id"] ?? "";
      const n = (attempts.get(id) ?? 0) + 1;
      attempts.set(id, n);
      const fail = req.url.match(/^\/fail-(\d+)/);
      let status = 200;
      if (req.url.startsWith("/always-fail") || (fail && n <= Number(fail[1]))) status = 500;
      requests.push({ method: req.method, url: req.url, headers: req.headers, body, status, at: Date.now() });
      res.writeHead(status, { "content-type": "text/plain" });
      res.end(status === 200 ? "ok" : "fail");
    });
  });
  return {
    requests,
    listen: () => new Promise((r) => server.listen(0, "127.0.0.1", () => r(server.address().port))),
    close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(() => r()); }),
  };
}
