// Contender (e): an origin-side limiter as people build it today. A Node HTTP server limits each
// API key with rate-limiter-flexible's RateLimiterRedis on a local redis-server (ioredis), then
// forwards to the origin over a keep-alive agent. Its limit is far above the load.
//
//   node server.mjs <port> <origin-url> <redis-port>
import http from "node:http";
import { Redis } from "ioredis";
import { RateLimiterRedis } from "rate-limiter-flexible";

const [port, originUrl, redisPort] = process.argv.slice(2);
const origin = new URL(originUrl);
const redis = new Redis({ host: "127.0.0.1", port: Number(redisPort), enableOfflineQueue: false });
const limiter = new RateLimiterRedis({ storeClient: redis, keyPrefix: "rl", points: 1_000_000_000, duration: 60 });
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

function forward(req, res, body) {
  const up = http.request(
    { host: origin.hostname, port: origin.port, method: req.method, path: req.url, headers: req.headers, agent },
    (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    },
  );
  up.on("error", () => {
    res.writeHead(502);
    res.end("origin unreachable");
  });
  up.end(body);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", async () => {
    if (req.url === "/_bench/health") {
      res.end(redis.status === "ready" ? "ok" : "starting");
      return;
    }
    const key = req.headers["x-api-key"] ?? "anonymous";
    try {
      await limiter.consume(key, 1);
    } catch (rejected) {
      if (rejected instanceof Error) {
        res.writeHead(503);
        res.end("limiter unavailable");
      } else {
        res.writeHead(429, { "retry-after": String(Math.ceil(rejected.msBeforeNext / 1000)) });
        res.end("rate limited");
      }
      return;
    }
    forward(req, res, Buffer.concat(chunks));
  });
});
server.keepAliveTimeout = 65_000;
server.listen(Number(port), "127.0.0.1", () => console.log(`redis limiter on ${port}`));
