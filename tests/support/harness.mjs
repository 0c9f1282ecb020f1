// The usual fixture of a test file: the gateway in the faithful runtime (and, when asked, a real
// HTTP origin in front of which it sits), started before the file's tests and stopped after them.
import { before, after } from "node:test";
import { startGateway } from "./gateway.mjs";
import { createOrigin } from "./origin.mjs";
import { client } from "./client.mjs";

/** An address nothing listens on: the origin of a file that proxies nothing. */
export const NO_ORIGIN = "http://127.0.0.1:9";

/**
 * Registers before/after hooks; the returned object gets `gw`, `api` (and `origin` with
 * `origin: true`) once the gateway is up. `vars` add to (or override) the test secrets and the
 * origin's URL; `setup(ctx)` runs once it is up (a second top-level `before` is not ordered after
 * this one). `persistTo` and `d1` are passed to `startGateway`.
 */
export function useGateway({ vars = {}, origin = false, setup = async () => {}, ...rest } = {}) {
  const ctx = {};
  before(async () => {
    let url = NO_ORIGIN;
    if (origin) {
      ctx.origin = createOrigin();
      url = `http://127.0.0.1:${await ctx.origin.listen()}`;
    }
    ctx.gw = await startGateway({ vars: { ORIGIN_URL: url, ...vars }, ...rest });
    ctx.api = client(ctx.gw.url);
    await setup(ctx);
  });
  after(async () => {
    await ctx.gw?.stop();
    await ctx.origin?.close();
  });
  return ctx;
}

/** `useGateway` with a real origin behind the gateway. */
export function gatewayWithOrigin(vars = {}, setup = async () => {}) {
  return useGateway({ vars, origin: true, setup });
}
