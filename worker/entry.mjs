// The Worker's entry module, as wrangler bundles it: the Rust build (worker-build's
// build/index.js) plus one declaration the runtime needs. Workers RPC reaches only a Durable
// Object class that extends `DurableObject`, and worker-build's class does not, so `OrgQuota`
// here extends it and hands every call to the Rust object: `fetch` (health and ledger
// messages), `alarm`, and `call`, the RPC method the gateway's hot path uses (one JSON string
// each way, no Request or Response; a message that must first look its plan up in D1 goes to
// the Rust side's fetch instead). Nothing else lives here.
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

  // "refresh": the org's copy of its plan is older than PLAN_REFRESH_SECS, and the Rust side
  // must ask D1 (an await) before deciding; its fetch handler does both.
  call(msg) {
    const reply = this.rust.call(msg);
    if (reply !== "refresh") return reply;
    const req = new Request("https://org.do/refresh", { method: "POST", body: msg });
    return this.rust.fetch(req).then((res) => res.text());
  }
}
