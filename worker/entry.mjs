// The Worker's entry module, as wrangler bundles it: the Rust build's glue (build/index.js, made
// by scripts/build-worker.sh) plus what the runtime needs around it. Nothing else lives here.
//
// - The default export is the Worker's entrypoint: `fetch` and `scheduled` hand the request or
//   the cron event to the Rust handlers with the entrypoint's env and ctx.
// - `OrgQuota` is the org's Durable Object. Workers RPC reaches only a class that extends
//   `DurableObject`, so this one does and hands every call to the Rust object: `fetch` (health
//   and ledger messages), `alarm`, and `call`, the RPC method the gateway's hot path uses (one
//   JSON string each way, no Request or Response; a message that must first look its plan up in
//   D1 goes to the Rust side's fetch instead).
// - `QuotaService` is the entrypoint another Worker of the account binds to
//   (`services = [{ binding = "QUOTA", service = "quotagate", entrypoint = "QuotaService" }]`)
//   and calls with Workers RPC: `check`, `reserve`, `commit`, `release`, `record` and `usage`,
//   each naming an org. Each hands its call to Rust (`rpc`), which runs exactly what the HTTP
//   API runs and answers `{ status, headers, body }` (clients/quotagate types it). A thin JS
//   entrypoint rather than workers-rs's own RPC support, which is still experimental: the RPC
//   surface is six methods, and the Rust side keeps one code path with the HTTP API.
// - Panic recovery. A Rust panic aborts the wasm instance (`WebAssembly.RuntimeError`, or the
//   worker crate's panic hook setting `criticalError`). The next call into Rust first makes a
//   fresh instance (`__wbg_reset_state`, from wasm-bindgen's --experimental-reset-state-function)
//   and the Durable Object makes a fresh Rust object on it, so one bad request cannot leave the
//   isolate answering "Module terminated" until it is evicted.
import { DurableObject, WorkerEntrypoint } from "cloudflare:workers";
import * as rust from "../build/index.js";

Error.stackTraceLimit = 100;
const state = rust.__worker_init_state();

function recover() {
  if (!state.criticalError) return;
  console.log("quotagate: reinitializing the wasm instance after a critical error");
  rust.__wbg_reset_state();
  state.criticalError = false;
  state.instanceId++;
}

function noteCritical(e) {
  if (e instanceof WebAssembly.RuntimeError) {
    console.error("quotagate: critical error in the wasm instance", e);
    state.criticalError = true;
  }
}

addEventListener("error", (e) => noteCritical(e.error));

/** Calls into Rust after recovering from an earlier abort, and notes an abort in this call. */
function guarded(call) {
  recover();
  let out;
  try {
    out = call();
  } catch (e) {
    noteCritical(e);
    throw e;
  }
  if (out instanceof Promise) {
    return out.catch((e) => {
      noteCritical(e);
      throw e;
    });
  }
  return out;
}

export default class Gateway extends WorkerEntrypoint {
  fetch(request) {
    return guarded(() => rust.fetch(request, this.env, this.ctx));
  }

  scheduled(controller) {
    return guarded(() => rust.scheduled(controller, this.env, this.ctx));
  }
}

/** One RPC call into Rust: the answer as a plain object (structured-cloned to the caller). */
function rpc(env, method, org, id, args) {
  if (typeof org !== "string") throw new TypeError("quotagate: the org id must be a string");
  const json = args === undefined ? "" : JSON.stringify(args);
  return guarded(() => rust.rpc(env, method, org, id ?? "", json)).then((text) => {
    const { status, headers, body } = JSON.parse(text);
    // Header names as fetch's Headers gives them, so both clients answer alike.
    return { ok: status < 300, status, headers: Object.fromEntries(headers.map(([k, v]) => [k.toLowerCase(), v])), body };
  });
}

export class QuotaService extends WorkerEntrypoint {
  /** A decision without reserving (`POST /_quota/v1/check`). */
  check(org, request) {
    return rpc(this.env, "check", org, "", request);
  }

  /** A decision that reserves (`POST /_quota/v1/check` with `reserve: true`). */
  reserve(org, request) {
    return rpc(this.env, "reserve", org, "", request);
  }

  /** Commits a reservation, with the quantity used (the reserved one by default). */
  commit(org, id, request) {
    return rpc(this.env, "commit", org, String(id ?? ""), request ?? {});
  }

  /** Gives a reservation's units back. */
  release(org, id) {
    return rpc(this.env, "release", org, String(id ?? ""), {});
  }

  /** Usage events (`POST /_quota/v1/events`), idempotent by event id. */
  record(org, request) {
    return rpc(this.env, "record", org, "", request);
  }

  /** The live overview (`GET /_quota/v1/usage`), or the status in short. */
  usage(org, request) {
    return rpc(this.env, "usage", org, "", request ?? {});
  }
}

export class OrgQuota extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.rustObj = guarded(() => new rust.OrgQuota(ctx, env));
    this.instanceId = state.instanceId;
  }

  /** The Rust object, made again on the new instance after a recovery (the old one is gone). */
  get rust() {
    recover();
    if (this.instanceId !== state.instanceId) {
      this.rustObj = new rust.OrgQuota(this.ctx, this.env);
      this.instanceId = state.instanceId;
    }
    return this.rustObj;
  }

  fetch(request) {
    return guarded(() => this.rust.fetch(request));
  }

  alarm(info) {
    return guarded(() => this.rust.alarm(info));
  }

  // "refresh": the org's copy of its plan is older than PLAN_REFRESH_SECS, and the Rust side
  // must ask D1 (an await) before deciding; its fetch handler does both.
  call(msg) {
    const reply = guarded(() => this.rust.call(msg));
    if (reply !== "refresh") return reply;
    const req = new Request("https://org.do/refresh", { method: "POST", body: msg });
    return guarded(() => this.rust.fetch(req)).then((res) => res.text());
  }
}
