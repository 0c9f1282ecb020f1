// The Worker's entry module, as wrangler bundles it: the Rust build (worker-build's
// build/index.js) plus one declaration the runtime needs. Workers RPC reaches only a Durable
// Object class that extends `DurableObject`, and worker-build's class does not, so `OrgQuota`
// here extends it and hands every call to the Rust object: `fetch` (health and ledger
// messages), `alarm`, and `call`, the RPC method the gateway's hot path uses (one JSON string
// each way, no Request or Response). Nothing else lives here.
import { DurableObject } from "cloudflare:workers";
import worker, { OrgQuota as RustOrgQuota } from "../build/index.js";

export default worker;

export class OrgQuota extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.rust = new RustOrgQuota(ctx, env);
  }

  fetch(request) {
    return this.rust.fetch(request);
  }

  alarm(info) {
    return this.rust.alarm(info);
  }

  call(msg) {
    return this.rust.call(msg);
  }
}
