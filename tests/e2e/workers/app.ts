// An API Worker in TypeScript, as a provider writes one with Hono: quotagate is bound to it as
// the `QUOTA` service (its `QuotaService` entrypoint) and guards its routes with the middleware
// from clients/quotagate. `x-org` names the org (a real API would take it from its own auth).
import { Hono, type Context } from "hono";
import { fromBinding, fromHttp, type QuotaService } from "../../../clients/quotagate/src/index.ts";
import { quota, type QuotaVariables } from "../../../clients/quotagate/src/hono.ts";

type AppEnv = { Bindings: { QUOTA: QuotaService; GATEWAY_URL: string }; Variables: QuotaVariables };
const app = new Hono<AppEnv>();
const client = (c: Context<AppEnv>) => fromBinding(c.env.QUOTA, c.req.header("x-org") ?? "");
// The same client over the HTTP API (the org key names the org), as a caller outside the account would use it.
const http = (c: Context<AppEnv>) => fromHttp({ baseUrl: c.env.GATEWAY_URL, key: c.req.header("x-key") ?? "" });

app.get("/noop", (c) => c.json({ ok: true }));

app.use("/api/*", quota({ client, meter: "requests" }));
app.get("/api/hello", (c) => c.json({ hello: "world", level: c.get("quota").level }));
app.get("/api/fail", (c) => c.json({ error: "upstream broke" }, 500));

app.use("/via-http/*", quota({ client: http, meter: "requests" }));
app.get("/via-http/hello", (c) => c.json({ hello: "world", level: c.get("quota").level }));

// Its cost is known only afterwards: 10 reserved while it runs, then what it reports.
app.use("/ai/*", quota({ client, meter: "ai_tokens", cost: 10, reported: true }));
app.post("/ai/complete", (c) => {
  c.set("quotaUsage", Number(c.req.query("tokens") ?? "7"));
  return c.json({ completion: "…" });
});

// The binding's methods, called directly, so the tests see each RPC answer as it is.
app.post("/rpc/:method", async (c) => {
  const { org, id, args } = await c.req.json<{ org: string; id?: string; args?: unknown }>();
  const q = c.env.QUOTA;
  const method = c.req.param("method");
  const answer =
    method === "check" ? await q.check(org, args as never)
    : method === "reserve" ? await q.reserve(org, args as never)
    : method === "commit" ? await q.commit(org, id ?? "", args as never)
    : method === "release" ? await q.release(org, id ?? "")
    : method === "record" ? await q.record(org, args as never)
    : method === "usage" ? await q.usage(org, args as never)
    : null;
  return answer === null ? c.json({ error: `no method ${method}` }, 404) : c.json(answer);
});

// One check over the HTTP API from this Worker: the path the RPC one is compared with.
app.post("/http/check", async (c) => c.json(await http(c).check(await c.req.json())));

export default app;
