// The operator console at /_quota/admin in real headless Chromium (Debian's, driven by
// playwright-core), against the bundle in workerd: the org list with 1,000 orgs (sorted by the
// levels orgs report, filtered, paginated), one org's usage chart and projection, keys created
// (plaintext shown once, copied) and revoked (then 401 at the gateway), a reset and a plan change
// with their confirms, a plan edit whose validation error shows beside its field, alerts and
// ledger health, a `read` token that sees everything and can change nothing, and no credential in
// a URL or in storage beyond the tab. Screenshots go to tests/artifacts/ (docs/ with
// DOCS_SCREENSHOTS=1).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { launchChromium } from "../support/browser.mjs";
import { ROOT, tempDir, ledgerFile } from "../support/gateway.mjs";
import { quotagateBundle } from "../support/bundle.mjs";
import { useGateway, NO_ORIGIN } from "../support/harness.mjs";
import { ADMIN_TOKEN, eventually } from "../support/client.mjs";
import { createReceiver } from "../support/receiver.mjs";

const SHOTS = process.env.DOCS_SCREENSHOTS ? path.join(ROOT, "docs") : path.join(ROOT, "tests/artifacts");
const ORGS = 1000;
const dir = tempDir();
// Threshold alerts go to a real receiver: the status view shows their delivery.
const rx = createReceiver();
const hooks = `http://127.0.0.1:${await rx.listen()}`;
let browser;
let readToken;
const at = (ago) => new Date(Date.now() - ago * 86_400_000).toISOString();

/**
 * Writes the catalogue rows of many orgs at once, straight into the D1 file the gateway then
 * starts on (workerd does not see rows written under it while it runs).
 */
async function seedOrgs() {
  fs.cpSync(path.join(await quotagateBundle(), "ledger"), dir, { recursive: true });
  const { DatabaseSync } = await import("node:sqlite");
  const db = new DatabaseSync(ledgerFile(dir));
  db.exec("PRAGMA busy_timeout = 5000");
  const now = Date.now();
  // The plan they are on (the setup PUTs it again, through the API).
  db.prepare("INSERT INTO plans (id, name, body, created_at, updated_at) VALUES ('con-free', 'Free', ?, ?, ?)")
    .run(JSON.stringify({ limits: [{ meter: "requests", limit: 1000, period: "month", mode: "hard" }] }), now, now);
  const org = db.prepare("INSERT INTO orgs (id, name, plan_id, overrides, created_at, updated_at) VALUES (?, ?, 'con-free', '[]', ?, ?)");
  const level = db.prepare("INSERT INTO org_levels (org_id, policy, meter, pct, until, updated_at) VALUES (?, ?, 'requests', ?, ?, ?)");
  db.exec("BEGIN");
  for (let i = 0; i < ORGS; i++) {
    const id = `bulk-${String(i).padStart(4, "0")}`;
    org.run(id, `Bulk ${i}`, now, now);
    // Levels 0..99 (bulk-0099 at 99% first), a month window still open.
    level.run(id, "requests-month", i % 100, now + 10 * 86_400_000, now);
    // A level whose window has reset reads as 0, however high it was.
    if (i % 100 === 0) level.run(id, "requests-day", 150, now - 1000, now);
  }
  db.exec("COMMIT");
  db.close();
}

before(seedOrgs);
const fx = useGateway({
  persistTo: dir,
  vars: { ORIGIN_URL: NO_ORIGIN, ORG_REPORT_SECS: "1", WEBHOOK_SECRET: "console-webhook-secret", ALERT_WEBHOOK_URL: `${hooks}/ok/alerts` },
  setup: async ({ api }) => {
    fs.mkdirSync(SHOTS, { recursive: true });
    await api.plan("con-free", { name: "Free", limits: [{ meter: "requests", limit: 1000, period: "month", mode: "hard" }] });
    await api.plan("con-pro", {
      name: "Pro",
      limits: [
        { meter: "requests", limit: 100, period: "day", mode: "soft" },
        { meter: "requests", limit: 2000, period: "month", mode: "soft" },
      ],
    });
    // One org that reports its level for real: usage, then its report a second later.
    await api.org("acme", { plan: "con-pro", name: "Acme Corp" });
    const key = (await api.key("acme")).key;
    const daily = [40, 60, 150, 80, 20, 120];
    const events = daily.map((q, i) => ({ id: `h${i}`, meter: "requests", quantity: q, timestamp: at(daily.length - i) }));
    events.push({ id: "today", meter: "requests", quantity: 1990 - daily.reduce((a, b) => a + b, 0) });
    assert.equal((await api.call("POST", "/_quota/v1/events", { key, body: { events } })).status, 200);
    assert.equal((await api.admin("POST", "/orgs/acme/flush")).status, 200);
    const r = await api.admin("POST", "/tokens", { name: "support", scope: "read" });
    readToken = r.json.token;
    browser = await launchChromium();
  },
});
after(async () => {
  await browser?.close();
  await rx.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** The console in a fresh browser context, signed in with `token` through the form. */
async function open(token, { width = 1280, height = 900, hash = "" } = {}) {
  const context = await browser.newContext({ viewport: { width, height } });
  const page = await context.newPage();
  page.on("pageerror", (e) => assert.fail(`page error: ${e.message}`));
  await page.goto(`${fx.gw.url}/_quota/admin${hash}`);
  if (token) {
    await page.fill("#token", token);
    await page.click("#auth button[type=submit]");
    await page.waitForFunction(() => document.querySelector("#who").textContent !== "");
  }
  return page;
}

const orgIds = (page) => page.locator("#org-table tbody tr").evaluateAll((rs) => rs.map((r) => r.dataset.org));

test("the org list: 1,000 orgs and a real one, nearest to a limit first, filtered and paginated", async () => {
  // acme's own report (ORG_REPORT_SECS=1) puts its levels in the catalogue.
  const reported = await eventually(async () => (await fx.api.admin("GET", "/orgs?q=acme")).json.orgs[0]?.level, { timeout: 15_000, every: 200 });
  // Its worst: the day's soft limit of 100, which every unit counted today (backdated ones too) is in.
  assert.deepEqual(reported && [reported.policy, reported.percentage], ["requests-day", 1990]);
  const api = await fx.api.admin("GET", "/orgs?limit=3");
  assert.equal(api.json.total, ORGS + 1);
  assert.deepEqual(api.json.orgs.map((o) => [o.id, o.level.percentage, o.level.policy]), [
    ["acme", 1990, "requests-day"], ["bulk-0099", 99, "requests-month"], ["bulk-0199", 99, "requests-month"],
  ]);
  // A day level at 150% whose window has reset reads 0: bulk-0000 sorts by its month (0%).
  const zero = (await fx.api.admin("GET", "/orgs?q=bulk-0000")).json.orgs[0];
  assert.equal(zero.level.percentage, 0);
  for (const [q, status] of [["limit=0", 400], ["limit=201", 400], ["offset=-1", 400], ["sort=pct", 400], [`q=${"x".repeat(65)}`, 400], ["plan=nope!", 400]]) {
    const r = await fx.api.admin("GET", `/orgs?${q}`);
    assert.equal(r.status, status, q);
    assert.equal(r.json.field, q.split("=")[0], "the problem names its field");
  }

  // The filter is text, bound as a parameter: SQL in it matches nothing.
  const sql = await fx.api.admin("GET", `/orgs?q=${encodeURIComponent("' OR 1=1 --")}`);
  assert.deepEqual([sql.status, sql.json.total, sql.json.orgs], [200, 0, []]);

  const page = await open(ADMIN_TOKEN);
  await page.waitForFunction(() => document.querySelectorAll("#org-table tbody tr").length === 50);
  assert.equal(await page.locator("#page-info").textContent(), "1–50 of 1,001");
  const first = await orgIds(page);
  assert.deepEqual(first.slice(0, 3), ["acme", "bulk-0099", "bulk-0199"]);
  assert.equal(await page.locator('#org-table tr[data-org="acme"]').getAttribute("data-colour"), "red");
  assert.equal(await page.locator('#org-table tr[data-org="acme"] .pill').textContent(), "1990%");
  await page.screenshot({ path: path.join(SHOTS, "console-orgs.png"), fullPage: false });
  // Page on: the next 50, none repeated, still by level.
  await page.click("#next");
  await page.waitForFunction(() => document.querySelector("#page-info").textContent === "51–100 of 1,001");
  const second = await orgIds(page);
  assert.equal(second.length, 50);
  assert.equal(second.filter((id) => first.includes(id)).length, 0);
  // Ten orgs at each level: the first page ended with nine of the ten at 95%.
  const levels = second.map((id) => Number(id.slice(-4)) % 100);
  assert.deepEqual(levels, [95, ...[94, 93, 92, 91].flatMap((l) => Array(10).fill(l)), ...Array(9).fill(90)]);
  // The last page.
  for (let i = 0; i < 19; i++) await page.click("#next");
  await page.waitForFunction(() => document.querySelector("#page-info").textContent === "1,001–1,001 of 1,001");
  assert.equal(await page.locator("#next").isDisabled(), true);
  // Filtered: by text (id or name, any case), then by plan.
  await page.fill("#org-filter", "BULK 12");
  await page.waitForFunction(() => document.querySelector("#page-info").textContent === "1–11 of 11");
  // "Bulk 12" and "Bulk 120".."Bulk 129" by name, by level: 29% down to 20%, then 12%.
  const tens = Array.from({ length: 10 }, (_, i) => `bulk-012${9 - i}`);
  assert.deepEqual(await orgIds(page), [...tens, "bulk-0012"]);
  await page.fill("#org-filter", "");
  await page.selectOption("#org-plan", "con-pro");
  await page.waitForFunction(() => document.querySelector("#page-info").textContent === "1–1 of 1");
  assert.deepEqual(await orgIds(page), ["acme"]);
  await page.context().close();
});

test("one org: its usage chart and projection, keys created (shown once, copied) and revoked (then 401), a reset and a plan change", async () => {
  const page = await open(ADMIN_TOKEN, { hash: "" });
  await page.context().grantPermissions(["clipboard-read", "clipboard-write"]);
  await page.locator('#org-table tr[data-org="acme"] a').click();
  await page.waitForFunction(() => document.querySelectorAll('[data-policy="requests-day"] .chart rect.day').length === 30);
  assert.match(await page.locator("#org-title").textContent(), /^acme · Acme Corp · plan con-pro$/);
  // The chart of the last 30 days: the seeded days, the ones over 100 marked.
  const days = await page.locator('[data-policy="requests-day"] .chart rect.day').evaluateAll((rs) => rs.map((r) => [r.dataset.date, Number(r.dataset.quantity), r.classList.contains("over")]));
  assert.equal(days.length, 30);
  for (const [ago, q] of [[4, 150], [1, 120], [5, 60]]) {
    assert.deepEqual(days.find((d) => d[0] === at(ago).slice(0, 10)), [at(ago).slice(0, 10), q, q > 100]);
  }
  assert.match(await page.locator('[data-policy="requests-month"] .projection').textContent(), /^at this rate: (limit reached on \d+ \w+|within the limit)$/);

  // A key: created, its plaintext shown once and copied, then revoked after a confirm.
  await page.click("#key-create");
  await page.waitForFunction(() => !document.querySelector("#new-key").hidden);
  const plaintext = await page.locator("#new-key-text").textContent();
  assert.match(plaintext, /^qg_acme\./);
  await page.click("#copy-key");
  await page.waitForFunction(() => document.querySelector("#copied").textContent === "copied");
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), plaintext);
  assert.equal((await fx.api.call("GET", "/_quota/v1/usage", { key: plaintext })).status, 200, "the new key works");
  const keyId = (await fx.api.admin("GET", "/orgs/acme/keys")).json.keys.find((k) => plaintext.startsWith(k.prefix) && k.state === "active" && k.key_id).key_id;
  const row = page.locator(`#keys tr[data-key="${keyId}"]`);
  await row.waitFor();
  assert.equal(await page.locator("#keys").textContent().then((t) => t.includes(plaintext)), false, "the listing never shows the plaintext");
  await page.screenshot({ path: path.join(SHOTS, "console-org.png"), fullPage: true });
  // Dismissing the confirm changes nothing.
  page.once("dialog", (d) => d.dismiss());
  await row.locator("button").click();
  assert.equal((await fx.api.call("GET", "/_quota/v1/usage", { key: plaintext })).status, 200);
  const asked = [];
  page.once("dialog", (d) => {
    asked.push(d.message());
    d.accept();
  });
  await row.locator("button").click();
  await page.locator(`#keys tr[data-key="${keyId}"][data-state="revoked"]`).waitFor();
  assert.match(asked[0], new RegExp(`^Revoke ${keyId}\\?`));
  assert.equal((await fx.api.call("GET", "/_quota/v1/usage", { key: plaintext })).status, 401, "the revoked key gets 401 at the gateway");
  assert.equal(await page.evaluate(() => document.body.textContent.includes("qg_acme.") && document.querySelector("#new-key").hidden), false);

  // Overrides with a bad limit: the server's message beside the overrides box; then a good plan change.
  await page.fill("#org-overrides", JSON.stringify([{ meter: "requests", limit: -5, period: "month" }]));
  await page.click("#org-form button[type=submit]");
  const err = page.locator('#org-form .field-error[data-field="overrides"]');
  await page.waitForFunction(() => document.querySelector('#org-form .field-error[data-field="overrides"]').textContent !== "");
  assert.match(await err.textContent(), /^overrides\[0\]\.limit: /);
  await page.fill("#org-overrides", "[]");
  await page.selectOption("#org-plan-select", "con-free");
  await page.click("#org-form button[type=submit]");
  await page.waitForFunction(() => document.querySelector("#org-title").textContent.endsWith("plan con-free"));
  assert.equal((await fx.api.admin("GET", "/orgs/acme")).json.plan, "con-free");

  // A reset, after its confirm: the month starts again from zero.
  page.once("dialog", (d) => d.accept());
  await page.selectOption("#reset-meter", "requests");
  await page.click("#reset-form button[type=submit]");
  await page.waitForFunction(() => document.querySelector("#reset-form .form-result").textContent === "Reset requests.");
  const used = (await fx.api.admin("GET", "/orgs/acme/usage")).json.meters.find((m) => m.policy === "requests-month").used;
  assert.equal(used, 0);
  // The reset moved acme's levels: its report follows (ORG_REPORT_SECS), and the list with it.
  const level = await eventually(async () => (await fx.api.admin("GET", "/orgs?q=acme")).json.orgs[0].level?.percentage === 0, { timeout: 10_000, every: 200 });
  assert.ok(level, "the list shows acme at 0% after its reset");
  // Put acme back as the list test left it, for the screenshots.
  await fx.api.org("acme", { plan: "con-pro", name: "Acme Corp" });
  await page.context().close();
});

test("a plan edit: the server's validation error appears beside the field it names", async () => {
  const page = await open(ADMIN_TOKEN, { hash: "#plans" });
  await page.locator("#plan-list button", { hasText: "con-pro" }).click();
  assert.equal(await page.inputValue("#plan-id"), "con-pro");
  assert.equal(await page.locator("#limit-rows tbody tr").count(), 2);
  // A third limit with a limit that is not a number.
  await page.click("#add-limit");
  const third = page.locator("#limit-rows tbody tr").nth(2);
  await third.locator("[name=meter]").fill("tokens");
  await third.locator("[name=limit]").fill("lots");
  await page.click("#plan-form button[type=submit]");
  const beside = third.locator('.field-error[data-field="limits[2].limit"]');
  await page.waitForFunction(() => document.querySelector('#limit-rows .field-error[data-field="limits[2].limit"]').textContent !== "");
  assert.match(await beside.textContent(), /^limits\[2\]\.limit: /);
  assert.equal(await page.locator('#limit-rows .field-error[data-field="limits[0].limit"]').textContent(), "", "only that field");
  await page.screenshot({ path: path.join(SHOTS, "console-plan-error.png"), fullPage: true });
  // Fixed, it saves: the plan's version rises.
  const before = (await fx.api.admin("GET", "/plans/con-pro")).json.version;
  await third.locator("[name=limit]").fill("5000");
  await page.click("#plan-form button[type=submit]");
  await page.waitForFunction(() => document.querySelector("#plan-form .form-result").textContent.startsWith("Saved: version"));
  const after = (await fx.api.admin("GET", "/plans/con-pro")).json;
  assert.equal(after.version, before + 1);
  assert.deepEqual(after.limits.find((l) => l.meter === "tokens"), { meter: "tokens", period: "month", limit: 5000, mode: "hard" });
  // An error in the JSON box's part (meters) lands beside the box.
  await page.fill("#plan-extra", JSON.stringify({ meters: [{ id: "tokens", unit: 5 }] }));
  await page.click("#plan-form button[type=submit]");
  await page.waitForFunction(() => document.querySelector('#plan-form .field-error[data-field="extra"]').textContent !== "");
  assert.match(await page.locator('#plan-form .field-error[data-field="extra"]').textContent(), /^meters\[0\]\.unit: /);
  await page.context().close();
});

test("alerts and ledger health: recent alert deliveries, the last flush, the Stripe breaker", async () => {
  // acme crossed its day limit's levels: each alert was delivered to the receiver.
  const delivered = await eventually(async () => {
    const alerts = (await fx.api.admin("GET", "/status")).json.alerts.filter((a) => a.org_id === "acme");
    return alerts.length >= 3 && alerts.every((a) => a.outcome === "delivered") && alerts;
  }, { timeout: 15_000, every: 200 });
  assert.ok(delivered, "acme's alerts were delivered");
  assert.ok(rx.requests.length >= 3);
  const page = await open(ADMIN_TOKEN, { hash: "#status" });
  await page.locator("#ledger-health dt").first().waitFor();
  const terms = await page.locator("#ledger-health, #stripe-health").evaluateAll((dls) => dls.map((dl) => dl.textContent));
  assert.match(terms[0], /Last flush\d+ \w+ \d{4}, \d\d:\d\d UTC/, "acme's flush is the last one");
  assert.match(terms[1], /^Breakerclosed/);
  const status = (await fx.api.admin("GET", "/status")).json;
  assert.deepEqual(status.you, { token_id: "bootstrap", name: "ADMIN_TOKEN", scope: "write" });
  assert.equal(typeof status.ledger.pending_events, "number");
  await page.locator('#alerts tr[data-outcome="delivered"]').first().waitFor();
  const rows = await page.locator("#alerts tbody tr").evaluateAll((rs) => rs.map((r) => [...r.cells].map((c) => c.textContent)));
  assert.equal(rows.length, status.alerts.length);
  for (const r of rows) {
    assert.equal(r[1], "acme");
    assert.equal(r[3], "delivered (200)");
    assert.equal(r[4], "1");
  }
  for (const a of status.alerts) assert.equal(JSON.stringify(a).includes("http"), false, "no receiving URL is shown");
  await page.screenshot({ path: path.join(SHOTS, "console-status.png"), fullPage: true });
  await page.context().close();
});

test("a read token sees every view and is shown no control that changes anything; the API refuses its writes", async () => {
  const page = await open(readToken);
  assert.match(await page.locator("#who").textContent(), /^support · read only$/);
  await page.waitForFunction(() => document.querySelectorAll("#org-table tbody tr").length === 50);
  await page.fill("#org-filter", "acme");
  await page.locator('#org-table tr[data-org="acme"] a').click();
  await page.locator("#keys tbody tr").first().waitFor();
  await page.locator('[data-policy="requests-month"]').waitFor();
  for (const sel of ["#key-create", "#org-form button[type=submit]", "#reset-form", "#keys button"]) {
    for (const e of await page.locator(sel).all()) assert.equal(await e.isVisible(), false, `${sel} is hidden`);
  }
  await page.click('#tabs [data-view="plans"]');
  await page.locator("#plan-list button").first().waitFor();
  assert.equal(await page.locator("#plan-form button[type=submit]").isVisible(), false);
  await page.click('#tabs [data-view="status"]');
  await page.locator("#ledger-health dt").first().waitFor();
  await page.click('#tabs [data-view="audit"]');
  await page.locator("#audit tbody tr").first().waitFor();
  assert.ok((await page.locator("#audit tbody").textContent()).includes("key.revoke"), "the audit log shows the console's writes");
  // What the page hides, the API refuses.
  const token = readToken;
  for (const [method, p, body] of [["POST", "/orgs/acme/keys", {}], ["PUT", "/plans/con-pro", { limits: [] }], ["POST", "/orgs/acme/reset", {}]]) {
    const r = await fetch(`${fx.gw.url}/_quota/admin${p}`, { method, headers: { authorization: `Bearer ${token}`, "content-type": "application/json" }, body: JSON.stringify(body) });
    assert.equal(r.status, 403, `${method} ${p}`);
  }
  await page.context().close();
});

test("no token in a URL or beyond the tab; a strict CSP; signing out forgets it; a bad token is refused", async () => {
  const link = await browser.newPage();
  const res = await link.goto(`${fx.gw.url}/_quota/admin#token=${encodeURIComponent(ADMIN_TOKEN)}`);
  assert.match(res.headers()["content-security-policy"], /default-src 'none'; script-src 'self'/);
  assert.match(res.headers()["content-security-policy"], /frame-ancestors 'none'/);
  await link.locator("#state.error").waitFor();
  assert.match(await link.locator("#state").textContent(), /^Sign-in links are not accepted/);
  assert.equal(await link.evaluate(() => location.hash), "");
  assert.equal(await link.evaluate(() => JSON.stringify({ ...sessionStorage, ...localStorage })), "{}");
  await link.close();

  const page = await open(ADMIN_TOKEN);
  assert.equal(await page.evaluate(() => localStorage.length), 0, "never in local storage");
  assert.equal(await page.evaluate(() => sessionStorage.getItem("qga")), ADMIN_TOKEN, "only in this tab's session storage");
  assert.equal(await page.evaluate(() => location.href.includes("test-admin")), false);
  await page.click("#signout");
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  assert.equal(await page.locator("#auth").isVisible(), true);
  await page.fill("#token", "qga_0000000000000000.nope");
  await page.click("#auth button[type=submit]");
  await page.locator("#state.error").waitFor();
  assert.equal(await page.locator("#state").textContent(), "That token was not accepted.");
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  // At phone width the org list still reads.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.fill("#token", ADMIN_TOKEN);
  await page.click("#auth button[type=submit]");
  await page.waitForFunction(() => document.querySelectorAll("#org-table tbody tr").length === 50);
  const w = await page.locator("#org-table").evaluate((e) => e.getBoundingClientRect().width);
  assert.ok(w <= 390, `table width ${w}`);
  await page.screenshot({ path: path.join(SHOTS, "console-phone.png"), fullPage: false });
  await page.context().close();
});
