// `wrangler deploy --dry-run` bundles the built worker exactly as a deploy would, without
// uploading: the bindings resolve and the bundle fits Cloudflare's size limit.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";
import { ROOT, tempDir } from "../support/gateway.mjs";

// Workers' limit on the compressed bundle (free plan; paid plans allow 10 MiB).
const LIMIT_GZIP = 3 * 1024 * 1024;

test("wrangler deploy --dry-run builds clean and the bundle fits the size limit", () => {
  const out = tempDir("quotagate-dry-");
  try {
    const log = execFileSync(path.join(ROOT, "node_modules/.bin/wrangler"), ["deploy", "--dry-run", "--outdir", out], {
      cwd: ROOT,
      env: { ...process.env, CI: "true", WRANGLER_SEND_METRICS: "false", NO_COLOR: "1" },
      encoding: "utf8",
    });
    assert.match(log, /--dry-run: exiting now\./);
    assert.match(log, /env\.ORG_QUOTA \(OrgQuota\)\s+Durable Object/);
    assert.match(log, /env\.LEDGER \(quotagate-ledger\)\s+D1 Database/);
    const files = fs.readdirSync(out);
    const wasm = files.find((f) => f.endsWith(".wasm"));
    assert.ok(wasm && files.includes("entry.js"), files.join(", "));
    const gzip = zlib.gzipSync(Buffer.concat(files.filter((f) => !f.endsWith(".map")).map((f) => fs.readFileSync(path.join(out, f)))), { level: 9 }).length;
    const wasmRaw = fs.statSync(path.join(out, wasm)).size;
    console.log(`bundle: wasm ${(wasmRaw / 1024).toFixed(0)} KiB raw, bundle ${(gzip / 1024).toFixed(0)} KiB gzip (limit ${LIMIT_GZIP / 1024} KiB); ${log.match(/Total Upload: .*/)?.[0]}`);
    assert.ok(gzip < LIMIT_GZIP, `bundle is ${gzip} bytes gzipped`);
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});
