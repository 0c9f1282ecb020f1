// The usage dashboard (drawing in usage.js): no framework. Credentials come from the form only and stay in
// sessionStorage (never localStorage, never a URL: a credential in a link stays in the browser's
// history, so a sign-in link is cleared unused). Refreshes every 30 seconds. A warning banner
// dismissed stays hidden for the session, until the warning changes.
"use strict";
const REFRESH_MS = 30_000;
const $ = (id) => document.getElementById(id);
let timer = null;
/** Daily history by meter, fetched on sign-in, when the range changes, and every 5 minutes. */
let daily = { key: "", at: 0, byMeter: {} };

/** Whether the page was opened with a credential in its URL: cleared at once, never used. */
function refuseLinkCredentials() {
  const hash = new URLSearchParams(location.hash.slice(1));
  if (!hash.has("key") && !hash.has("admin")) return false;
  history.replaceState(null, "", location.pathname);
  return true;
}

function creds() {
  try {
    return JSON.parse(sessionStorage.getItem("qg") ?? "null");
  } catch {
    return null;
  }
}

function render(u) {
  $("org").textContent = `${u.org_id} · plan ${u.plan}`;
  const main = $("meters");
  main.replaceChildren();
  let worst = "ok";
  const flagged = [];
  for (const m of u.meters) {
    const c = colour(m.percentage);
    if (c !== "green") flagged.push(`${m.policy} at ${m.percentage}%`);
    if (c === "red") worst = "over";
    else if (c === "amber" && worst === "ok") worst = "warning";
    main.append(meterCard(m, daily.byMeter[m.meter]));
  }
  const banner = $("banner");
  const text = worst === "over" ? `Over limit: ${flagged.join(", ")}` : `Approaching limits: ${flagged.join(", ")}`;
  banner.className = worst;
  banner.dataset.text = text;
  $("banner-text").textContent = text;
  // Dismissed for the session: hidden until the warning says something else.
  banner.hidden = worst === "ok" || sessionStorage.getItem("qg-dismissed") === text;
  const cost = u.total_overage_cost_cents;
  $("updated").textContent = `Updated ${new Date().toLocaleTimeString("en-GB")}${cost ? ` · overage this period ${(cost / 100).toFixed(2)}` : ""}`;
}

function show(state, text) {
  const s = $("state");
  s.hidden = !text;
  s.className = state;
  s.textContent = text ?? "";
}

/** Each meter's daily series for the selected range, from the ledger (refetched every 5 min). */
async function loadHistory(c, usage) {
  const range = Number($("range").value);
  const key = `${JSON.stringify(c)}|${range}`;
  if (daily.key === key && Date.now() - daily.at < 300_000) return;
  const admin = c.admin && c.org;
  const url = (q) => (admin ? `/_quota/admin/orgs/${encodeURIComponent(c.org)}/history?${q}` : `/_quota/v1/usage/history?${q}`);
  const headers = admin ? { authorization: `Bearer ${c.admin}` } : { "x-api-key": c.key ?? "" };
  daily = { key, at: Date.now(), byMeter: await fetchDaily(url, headers, usage.meters.map((m) => m.meter), range) };
}

async function load() {
  clearTimeout(timer);
  const c = creds();
  $("auth").hidden = !!c;
  $("signout").hidden = !c;
  if (!c) {
    show("", "");
    return;
  }
  if (!$("meters").children.length) show("loading", "Loading usage…");
  const admin = c.admin && c.org;
  const url = admin ? `/_quota/admin/orgs/${encodeURIComponent(c.org)}/usage` : "/_quota/v1/usage";
  const headers = admin ? { authorization: `Bearer ${c.admin}` } : { "x-api-key": c.key ?? "" };
  try {
    const r = await fetch(url, { headers, cache: "no-store" });
    const body = await r.json().catch(() => null);
    if (!r.ok) {
      const why = r.status === 401 ? "That key or token was not accepted." : (body?.detail ?? `The gateway answered ${r.status}.`);
      $("meters").replaceChildren();
      $("banner").hidden = true;
      show("error", why);
      if (r.status === 401) sessionStorage.removeItem("qg");
      $("auth").hidden = r.status !== 401;
      return;
    }
    show("", "");
    await loadHistory(c, body);
    render(body);
  } catch (e) {
    show("error", "The gateway could not be reached; retrying.");
  }
  timer = setTimeout(load, REFRESH_MS);
}

$("auth").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = $("key").value.trim();
  const admin = $("admin").value.trim();
  const org = $("orgid").value.trim();
  sessionStorage.setItem("qg", JSON.stringify(key ? { key } : { admin, org }));
  load();
});
$("range").addEventListener("change", () => load());
$("dismiss").addEventListener("click", () => {
  sessionStorage.setItem("qg-dismissed", $("banner").dataset.text ?? "");
  $("banner").hidden = true;
});
$("signout").addEventListener("click", () => {
  sessionStorage.removeItem("qg");
  sessionStorage.removeItem("qg-dismissed");
  $("meters").replaceChildren();
  $("banner").hidden = true;
  $("org").textContent = "";
  load();
});
if (refuseLinkCredentials()) {
  show("error", "Sign-in links are not accepted: a key in a URL stays in the browser's history. Sign in with the form.");
} else {
  load();
}
