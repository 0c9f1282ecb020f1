// The benchmark's origin: as fast as Node's HTTP server goes. It records nothing and answers
// every request with a small fixed JSON body; under /v1/ai/ it also reports usage in
// `X-Usage-Ai-Tokens` (post-response metering). The same origin serves every contender.
//
//   node bench/origin.mjs <port>
import http from "node:http";

const BODY = JSON.stringify({ ok: true, origin: "bench" });
const server = http.createServer((req, res) => {
  req.resume();
  req.on("end", () => {
    const headers = { "content-type": "application/json", "content-length": Buffer.byteLength(BODY) };
    if (req.url.startsWith("/v1/ai/")) headers["x-usage-ai-tokens"] = "7";
    res.writeHead(200, headers);
    res.end(BODY);
  });
});
server.keepAliveTimeout = 65_000;
server.listen(Number(process.argv[2] ?? 0), "127.0.0.1", () => console.log(`bench origin on ${server.address().port}`));
