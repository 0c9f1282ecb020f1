// The bad-input corpus (corpus.mjs) against the running gateway: every malformed request gets its
// documented 4xx as RFC 9457 problem JSON, never a 5xx, and nothing is counted, reserved, written
// to the ledger or forwarded to the origin.
import { test } from "node:test";
import assert from "node:assert/strict";
import { gatewayWithOrigin } from "../support/harness.mjs";
import { ledgerQuery } from "../support/gateway.mjs";
import { ADMIN_TOKEN } from "../support/client.mjs";
import { record } from "../support/report.mjs";
import { corpus } from "./corpus.mjs";

const fx = gatewayWithOrigin();

/** Everything a bad request could have changed: both orgs' counters and reservations, the ledger. */
async function snapshot(orgs) {
  const state = {};
  for (const org of orgs) {
    await fx.api.admin("POST", `/orgs/${org}/flush`);
    const s = await fx.api.state(org);
    state[org] = { limits: s.limits.map((l) => [l.policy, l.used]), reservations: s.reservations ?? null };
  }
  state.ledger = (await ledgerQuery(fx.gw.persistTo, "SELECT COALESCE(SUM(events), 0) AS n, COALESCE(SUM(quantity), 0) AS q FROM usage_hourly"))[0];
  state.keys = (await ledgerQuery(fx.gw.persistTo, "SELECT COUNT(*) AS n, COUNT(revoked_at) AS r, COUNT(expires_at) AS e FROM api_keys"))[0];
  state.tokens = (await ledgerQuery(fx.gw.persistTo, "SELECT COUNT(*) AS n, COUNT(revoked_at) AS r FROM admin_tokens"))[0];
  state.orgs = await ledgerQuery(fx.gw.persistTo, "SELECT * FROM orgs ORDER BY id");
  state.plans = await ledgerQuery(fx.gw.persistTo, "SELECT * FROM plans ORDER BY id");
  return state;
}

test("the bad-input corpus: documented 4xx each, no 5xx, nothing counted", async () => {
  await fx.api.plan("bad", {
    limits: [
      { meter: "requests", limit: 1000, period: "month", mode: "hard" },
      { meter: "rows", limit: 1000, period: "month" },
    ],
  });
  await fx.api.org("org-a", { plan: "bad" });
  await fx.api.org("org-b", { plan: "bad" });
  const a = await fx.api.key("org-a");
  const b = await fx.api.key("org-b");
  const reserve = async (key) => {
    const r = await fx.api.call("POST", "/_quota/v1/check", { key, body: { meter: "requests", quantity: 1, reserve: true } });
    assert.equal(r.status, 200, r.text);
    return r.json.reservation.id;
  };
  const revoked = await fx.api.key("org-a");
  assert.equal((await fx.api.admin("DELETE", `/orgs/org-a/keys/${revoked.key_id}`)).status, 200);
  const reader = await fx.api.admin("POST", "/tokens", { name: "corpus reader", scope: "read" });
  assert.equal(reader.status, 201, reader.text);
  const ctx = {
    orgA: "org-a",
    keyA: a.key,
    keyIdA: a.key_id,
    revokedKeyId: revoked.key_id,
    readToken: reader.json.token,
    adminToken: ADMIN_TOKEN,
    ownReservation: await reserve(a.key),
    otherReservation: await reserve(b.key),
    otherKeyId: b.key_id,
  };
  const cases = corpus(ctx);
  assert.ok(cases.length >= 100, `${cases.length} cases`);
  const seenBefore = fx.origin.requests.length;
  const before = await snapshot(["org-a", "org-b"]);

  const wrong = [];
  const groups = {};
  for (const c of cases) {
    const headers = { ...(c.headers ?? {}) };
    if (c.auth === "a") headers["x-api-key"] = a.key;
    else if (c.auth === "admin") headers.authorization = `Bearer ${ADMIN_TOKEN}`;
    else if (typeof c.auth === "object") Object.assign(headers, c.auth);
    if (c.body !== undefined) headers["content-type"] = "application/json";
    const r = await fetch(`${fx.gw.url}${c.path}`, { method: c.method, headers, body: c.body });
    const text = await r.text();
    const type = r.headers.get("content-type") ?? "";
    let problem = null;
    try {
      problem = JSON.parse(text);
    } catch {}
    const okShape = type.startsWith("application/problem+json") && problem && typeof problem.title === "string" && problem.status === r.status;
    if (r.status !== c.status || !okShape) wrong.push(`${c.name}: expected ${c.status}, got ${r.status} ${type} ${text.slice(0, 160)}`);
    groups[c.group] = (groups[c.group] ?? 0) + 1;
    assert.ok(r.status < 500, `${c.name}: a 5xx for bad input: ${r.status} ${text.slice(0, 200)}`);
  }
  const after = await snapshot(["org-a", "org-b"]);
  const forwarded = fx.origin.requests.length - seenBefore;
  record(
    "Bad input",
    `${cases.length} malformed requests across every endpoint (${Object.entries(groups).map(([g, n]) => `${g} ${n}`).join(", ")})`,
    `${cases.length - wrong.length} answered with their documented 4xx as problem JSON, ${wrong.length} otherwise; 0 5xx; counters, reservations, ledger, keys, orgs and plans ${JSON.stringify(before) === JSON.stringify(after) ? "unchanged" : "CHANGED"}; ${forwarded} forwarded to the origin`,
  );
  assert.deepEqual(wrong, []);
  assert.deepEqual(after, before, "no bad request changed any state");
  assert.equal(forwarded, 0, "no bad request reached the origin");
});
