// The usual fixture of an end-to-end test file: a real origin and the gateway in front of it,
// started before the file's tests and stopped after them.
import { before, after } from "node:test";
import { startGateway } from "./gateway.mjs";
import { createOrigin } from "./origin.mjs";
import { client, ADMIN_TOKEN, KEY_SECRET, ORIGIN_SECRET } from "./client.mjs";

/**
 * Registers before/after hooks; the returned object gets `gw`, `origin` and `api` once the
 * gateway is up. `vars` add to (or override) the test secrets and the origin's URL; `setup(ctx)`
 * runs once it is up (a second top-level `before` is not ordered after this one).
 */
export function gatewayWithOrigin(vars = {}, setup = async () => {}) {
  const ctx = {};
  before(async () => {
    ctx.origin = createOrigin();
    const port = await ctx.origin.listen();
    ctx.gw = await startGateway({ vars: { ADMIN_TOKEN, KEY_SECRET, ORIGIN_SECRET, ORIGIN_URL: `http://127.0.0.1:${port}`, ...vars } });
    ctx.api = client(ctx.gw.url);
    await setup(ctx);
  });
  after(async () => {
    await ctx.gw?.stop();
    await ctx.origin?.close();
  });
  return ctx;
}
