// The usage dashboard in real headless Chromium (Debian's, driven by playwright-core): bars
// coloured green / amber / red by percentage, the banner, soft-limit overage, admin mode, loading
// and error states, the 30-second refresh, and a phone-width layout. Screenshots of each colour
// level go to tests/artifacts/ (and to docs/ with DOCS_SCREENSHOTS=1).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { launchChromium } from "../support/browser.mjs";
import { ROOT } from "../support/gateway.mjs";
import { useGateway } from "../support/harness.mjs";
import { ADMIN_TOKEN } from "../support/client.mjs";

const SHOTS = process.env.DOCS_SCREENSHOTS ? path.join(ROOT, "docs") : path.join(ROOT, "tests/artifacts");
const COLOURS = { green: "rgb(26, 127, 55)", amber: "rgb(179, 89, 0)", red: "rgb(207, 34, 46)" };
let browser;
const keys = {};

const fx = useGateway({ setup: async ({ api }) => {
  fs.mkdirSync(SHOTS, { recursive: true });
  await api.plan("dash", {
    meters: [{ id: "ai_tokens", unit: "tokens" }],
    limits: [
      { meter: "requests", limit: 100, period: "month", mode: "hard" },
      { meter: "ai_tokens", limit: 1000, period: "month", mode: "soft", overage_price: { per_units: 100, cents: 5 } },
      { meter: "requests", limit: 1000, period: "minute" },
    ],
  });
  const usage = { green: [50, 100], amber: [85, 900], red: [100, 1200] };
  for (const [level, [req, tokens]] of Object.entries(usage)) {
    await api.org(`dash-${level}`, { plan: "dash", name: `Dash ${level}` });
    keys[level] = (await api.key(`dash-${level}`)).key;
    const events = [{ id: "r", meter: "requests", quantity: req }, { id: "t", meter: "ai_tokens", quantity: tokens }];
    assert.equal((await api.call("POST", "/_quota/v1/events", { key: keys[level], body: { events } })).status, 200);
  }
  browser = await launchChromium();
} });
after(async () => {
  await browser?.close();
});

/** The dashboard in a fresh browser session, signed in with `key` through the form (if given). */
async function open(key, { width = 1100, height = 800, clock = false } = {}) {
  const page = await browser.newPage({ viewport: { width, height } });
  if (clock) await page.clock.install();
  await page.goto(`${fx.gw.url}/_quota/dashboard`);
  if (key) await signIn(page, key);
  return page;
}

async function signIn(page, key) {
  await page.fill("#key", key);
  await page.click("button[type=submit]");
}

for (const level of ["green", "amber", "red"]) {
  test(`${level}: bars, banner and overage as a person sees them`, async () => {
    const page = await open(keys[level]);
    const card = page.locator('[data-policy="requests-month"]');
    await card.waitFor();
    assert.equal(await card.getAttribute("data-colour"), level);
    const fill = card.locator(".fill");
    assert.equal(await fill.evaluate((e) => getComputedStyle(e).backgroundColor), COLOURS[level]);
    const pct = { green: 50, amber: 85, red: 100 }[level];
    assert.equal(await fill.evaluate((e) => e.style.width), `${pct}%`);
    assert.match(await card.locator(".nums").textContent(), new RegExp(`^${pct} / 100 requests$`));
    assert.match(await card.locator(".meta").textContent(), /resets \d{1,2} [A-Z][a-z]{2} \d{4}, 00:00 UTC/);
    const banner = page.locator("#banner");
    if (level === "green") {
      assert.equal(await banner.isVisible(), false);
    } else {
      assert.equal(await banner.isVisible(), true);
      assert.equal(await banner.getAttribute("class"), level === "red" ? "over" : "warning");
      assert.match(await banner.locator("#banner-text").textContent(), level === "red" ? /^Over limit: ai_tokens-month at 120%, requests-month at 100%$/ : /^Approaching limits: ai_tokens-month at 90%, requests-month at 85%$/);
    }
    const overage = page.locator('[data-policy="ai_tokens-month"] .overage');
    if (level === "red") {
      assert.equal(await overage.textContent(), "Overage 200 tokens · 0.10 in overage charges");
    } else {
      assert.equal(await overage.count(), 0);
    }
    assert.match(await page.locator("#org").textContent(), new RegExp(`^dash-${level} · plan dash$`));
    await page.screenshot({ path: path.join(SHOTS, `dashboard-${level}.png`), fullPage: true });
    await page.close();
  });
}

test("admin token + org, phone width", async () => {
  const page = await open(null, { width: 390, height: 844 });
  await page.fill("#admin", ADMIN_TOKEN);
  await page.fill("#orgid", "dash-red");
  await page.click("button[type=submit]");
  await page.locator('[data-policy="requests-month"]').waitFor();
  assert.equal(await page.locator(".limit").count(), 3);
  const widths = await page.locator(".limit").evaluateAll((els) => els.map((e) => e.getBoundingClientRect().width));
  assert.ok(widths.every((w) => w <= 390 && w > 300), `one column on a phone: ${widths}`);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
  assert.equal(overflow, false, "no horizontal scrolling");
  await page.screenshot({ path: path.join(SHOTS, "dashboard-phone.png"), fullPage: true });
  await page.close();
});

test("loading and error states", async () => {
  const page = await browser.newPage();
  let release;
  const held = new Promise((r) => (release = r));
  await page.route("**/_quota/v1/usage", async (route) => {
    await held;
    await route.continue();
  });
  await page.goto(`${fx.gw.url}/_quota/dashboard`);
  await signIn(page, keys.green);
  await page.locator("#state.loading").waitFor();
  assert.equal(await page.locator("#state").textContent(), "Loading usage…");
  release();
  await page.locator(".limit").first().waitFor();
  assert.equal(await page.locator("#state").isVisible(), false);
  await page.unroute("**/_quota/v1/usage");
  const bad = await open("qg_nobody.00000000000000000000000000000000.00000000000000000000000000000000");
  await bad.locator("#state.error").waitFor();
  assert.equal(await bad.locator("#state").textContent(), "That key or token was not accepted.");
  assert.equal(await bad.locator("#auth").isVisible(), true, "the form comes back");
  await bad.close();
  await page.close();
});

test("the page refreshes itself every 30 seconds", async () => {
  await fx.api.org("dash-live", { plan: "dash" });
  const key = (await fx.api.key("dash-live")).key;
  const page = await open(key, { clock: true });
  const nums = page.locator('[data-policy="requests-month"] .nums');
  await nums.waitFor();
  assert.equal(await nums.textContent(), "0 / 100 requests");
  await fx.api.call("POST", "/_quota/v1/events", { key, body: { events: [{ id: "x", meter: "requests", quantity: 81 }] } });
  await page.clock.fastForward(29_000);
  assert.equal(await nums.textContent(), "0 / 100 requests", "not before 30 s");
  await page.clock.fastForward(1_500);
  await page.waitForFunction(() => document.querySelector('[data-policy="requests-month"] .nums')?.textContent === "81 / 100 requests");
  assert.equal(await page.locator('[data-policy="requests-month"]').getAttribute("data-colour"), "amber");
  await page.close();
});

test("a key or token in the URL is cleared at once and never used; the page is served with a strict CSP", async () => {
  for (const hash of [`key=${encodeURIComponent(keys.green)}`, `admin=${encodeURIComponent(ADMIN_TOKEN)}&org=dash-green`]) {
    const page = await browser.newPage();
    const res = await page.goto(`${fx.gw.url}/_quota/dashboard#${hash}`);
    const csp = res.headers()["content-security-policy"];
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /script-src 'self'/);
    assert.match(csp, /frame-ancestors 'none'/);
    await page.locator("#state.error").waitFor();
    assert.match(await page.locator("#state").textContent(), /^Sign-in links are not accepted/);
    assert.equal(await page.evaluate(() => location.hash), "", "the credential left the URL at once");
    assert.equal(await page.evaluate(() => JSON.stringify({ ...sessionStorage, ...localStorage })), "{}", "and was stored nowhere");
    assert.equal(await page.locator(".limit").count(), 0, "nothing was loaded with it");
    assert.equal(await page.locator("#auth").isVisible(), true);
    await page.close();
  }
});

test("the warning banner can be dismissed for the session, and comes back when the warning changes", async () => {
  await fx.api.org("dash-dismiss", { plan: "dash" });
  const key = (await fx.api.key("dash-dismiss")).key;
  await fx.api.call("POST", "/_quota/v1/events", { key, body: { events: [{ id: "d1", meter: "requests", quantity: 85 }] } });
  const page = await open(key);
  const banner = page.locator("#banner");
  await page.locator('[data-policy="requests-month"]').waitFor();
  assert.equal(await banner.isVisible(), true);
  await page.click("#dismiss");
  assert.equal(await banner.isVisible(), false);
  await page.reload();
  await page.locator('[data-policy="requests-month"]').waitFor();
  assert.equal(await banner.isVisible(), false, "still dismissed after a reload: the session remembers");
  // A worse warning is news: the banner is back.
  await fx.api.call("POST", "/_quota/v1/events", { key, body: { events: [{ id: "d2", meter: "requests", quantity: 15 }] } });
  await page.reload();
  await page.locator('[data-policy="requests-month"][data-colour="red"]').waitFor();
  assert.equal(await banner.isVisible(), true);
  assert.match(await page.locator("#banner-text").textContent(), /^Over limit: requests-month at 100%$/);
  await page.close();
  // Another session (a new page context) sees the warning again.
  const other = await open(key);
  await other.locator('[data-policy="requests-month"]').waitFor();
  assert.equal(await other.locator("#banner").isVisible(), true);
  await other.close();
});

test("usage over time: a chart of the days with the limit line, days over it marked, and a projection", async () => {
  await fx.api.plan("dash-hist", {
    limits: [
      { meter: "requests", limit: 100, period: "day", mode: "soft" },
      { meter: "requests", limit: 1000, period: "month", mode: "soft" },
    ],
  });
  await fx.api.org("dash-hist", { plan: "dash-hist" });
  const key = (await fx.api.key("dash-hist")).key;
  const daily = [40, 60, 150, 80, 20, 120];
  const at = (ago) => new Date(Date.now() - ago * 86_400_000).toISOString();
  const events = daily.map((q, i) => ({ id: `h${i}`, meter: "requests", quantity: q, timestamp: at(daily.length - i) }));
  assert.equal((await fx.api.call("POST", "/_quota/v1/events", { key, body: { events } })).status, 200);
  assert.equal((await fx.api.admin("POST", "/orgs/dash-hist/flush")).status, 200);

  const page = await open(key);
  await page.selectOption("#range", "7");
  const bars = page.locator('[data-policy="requests-day"] .chart rect.day');
  await page.waitForFunction(() => document.querySelectorAll('[data-policy="requests-day"] .chart rect.day').length === 7);
  const seen = await bars.evaluateAll((rs) => rs.map((r) => [r.dataset.date, Number(r.dataset.quantity), r.classList.contains("over")]));
  const expected = daily.map((q, i) => [at(daily.length - i).slice(0, 10), q, q > 100]);
  assert.deepEqual(seen.slice(0, 6), expected, "one bar a day, the days over 100 marked");
  assert.equal(await page.locator('[data-policy="requests-day"] .limit-line').count(), 1, "the limit is a line");
  // Hover names the day; a tap writes it under the chart.
  assert.equal(await bars.nth(2).locator("title").textContent(), `${expected[2][0]}: 150 requests (over)`);
  await bars.nth(2).click();
  assert.equal(await page.locator('[data-policy="requests-day"] .chart-value').textContent(), `${expected[2][0]}: 150 requests (over)`);
  // The month's projection, from the same numbers the usage API gives.
  const u = (await fx.api.call("GET", "/_quota/v1/usage", { key })).json;
  const m = u.meters.find((x) => x.policy === "requests-month");
  const start = Date.parse(m.window_start);
  const when = Date.now() + ((m.limit - m.used) * (Date.now() - start)) / m.used;
  const text = when >= Date.parse(m.reset_at) ? "at this rate: within the limit"
    : `at this rate: limit reached on ${new Date(when).toLocaleDateString("en-GB", { day: "numeric", month: "short", timeZone: "UTC" })}`;
  assert.equal(await page.locator('[data-policy="requests-month"] .projection').textContent(), text);
  // At phone width the chart fits.
  await page.setViewportSize({ width: 390, height: 844 });
  const w = await page.locator('[data-policy="requests-day"] .chart svg').evaluate((e) => e.getBoundingClientRect().width);
  assert.ok(w > 250 && w <= 390, `chart width ${w}`);
  await page.screenshot({ path: path.join(SHOTS, "dashboard-history.png"), fullPage: true });
  await page.close();
});
