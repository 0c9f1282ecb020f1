// Periods roll over at their exact boundary, end to end. The gateway runs on a shifted clock
// (QUOTA_CLOCK_OFFSET_MS, a test-only knob) a minute before a real UTC midnight, then is restarted
// on the same persisted state a minute after it. The day window and an anniversary month anchored
// on that day start over; a calendar month that does not end there carries on; the ledger keeps
// the previous day's totals.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import { startGateway, tempDir } from "../support/gateway.mjs";
import { client } from "../support/client.mjs";
import { NO_ORIGIN } from "../support/harness.mjs";

const dir = tempDir("quotagate-rollover-");
let gw;
after(async () => {
  await gw?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

test("day and anniversary-month windows roll over at midnight UTC; the ledger keeps both days", async () => {
  // A midnight that is not the first of a month, so the calendar month carries on across it.
  let midnight = new Date();
  midnight.setUTCHours(24, 0, 0, 0);
  while (midnight.getUTCDate() === 1) midnight = new Date(midnight.getTime() + 86_400_000);
  const day1 = new Date(midnight.getTime() - 86_400_000).toISOString().slice(0, 10);
  const day2 = midnight.toISOString().slice(0, 10);
  const base = { ORIGIN_URL: NO_ORIGIN };
  const at = (ms) => ({ ...base, QUOTA_CLOCK_OFFSET_MS: String(ms - Date.now()) });

  gw = await startGateway({ vars: at(midnight.getTime() - 90_000), persistTo: dir });
  let api = client(gw.url);
  await api.plan("daily", {
    limits: [
      { meter: "rows", limit: 5, period: "day", mode: "hard" },
      { meter: "rows", limit: 100, period: "month", mode: "hard" },
    ],
  });
  await api.org("org-cal", { plan: "daily" });
  // Anchored on the new day's day-of-month: its month rolls over at the same midnight.
  await api.org("org-anniv", { plan: "daily", billing_anchor: `2025-01-${day2.slice(8, 10)}` });
  const keys = { cal: (await api.key("org-cal")).key, anniv: (await api.key("org-anniv")).key };
  const send = (key, id, enforce = true) =>
    api.call("POST", "/_quota/v1/events", { key, body: { enforce, events: [{ id, meter: "rows", quantity: 5 }] } });
  for (const [name, key] of Object.entries(keys)) {
    assert.equal((await send(key, `${name}-a`)).json.results[0].status, "accepted");
    assert.equal((await send(key, `${name}-b`)).json.results[0].status, "rejected", "the day is full");
  }
  const before = await api.state("org-anniv");
  const beforeMonth = before.limits.find((l) => l.policy === "rows-month");
  assert.equal(beforeMonth.reset_at, `${day2}T00:00:00Z`, "the anniversary month ends at this midnight");
  for (const org of ["org-cal", "org-anniv"]) await api.admin("POST", `/orgs/${org}/flush`);
  await gw.stop();

  gw = await startGateway({ vars: at(midnight.getTime() + 60_000), persistTo: dir });
  api = client(gw.url);
  for (const [name, key] of Object.entries(keys)) {
    assert.equal((await send(key, `${name}-c`)).json.results[0].status, "accepted", `${name}: a new day`);
  }
  const used = async (org) => Object.fromEntries((await api.state(org)).limits.map((l) => [l.policy, l.used]));
  assert.deepEqual(await used("org-cal"), { "rows-day": 5, "rows-month": 10 }, "calendar month carries on");
  assert.deepEqual(await used("org-anniv"), { "rows-day": 5, "rows-month": 5 }, "anniversary month started over");
  for (const org of ["org-cal", "org-anniv"]) await api.admin("POST", `/orgs/${org}/flush`);
  const h = await api.call("GET", `/_quota/v1/usage/history?meter=rows&from=${day1}&to=${day2}`, { key: keys.cal });
  assert.deepEqual(h.json.days.map((d) => [d.date, d.quantity]), [[day1, 5], [day2, 5]], "the previous day stays in the ledger");
});
