// The usage dashboard: no framework. Credentials come from the form only and stay in
// sessionStorage (never localStorage, never a URL: a credential in a link stays in the browser's
// history, so a sign-in link is cleared unused). Refreshes every 30 seconds. A warning banner
// dismissed stays hidden for the session, until the warning changes.
"use strict";
const REFRESH_MS = 30_000;
const $ = (id) => document.getElementById(id);
const nf = new Intl.NumberFormat("en-US");
const DAY_MS = 86_400_000;
const SVG = "http://www.w3.org/2000/svg";
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

function colour(pct) {
  if (pct === null) return "green";
  if (pct >= 100) return "red";
  if (pct >= 80) return "amber";
  return "green";
}

function when(iso) {
  if (!iso) return "never resets";
  const d = new Date(iso);
  return "resets " + d.toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "short", timeZone: "UTC" }) + " UTC";
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

/** "at this rate: limit reached on 14 Dec", from the window so far; null when it cannot say. */
function projection(m, now = Date.now()) {
  if (m.limit === null || !m.reset_at || ["second", "minute", "hour"].includes(m.period)) return null;
  if (m.used >= m.limit) return "limit reached";
  const start = Date.parse(m.window_start);
  const end = Date.parse(m.reset_at);
  const elapsed = now - start;
  if (!(elapsed > 0) || m.used === 0) return "at this rate: within the limit";
  const at = now + ((m.limit - m.used) * elapsed) / m.used;
  if (at >= end) return "at this rate: within the limit";
  return "at this rate: limit reached on " + new Date(at).toLocaleDateString("en-GB", { day: "numeric", month: "short", timeZone: "UTC" });
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

/**
 * Daily usage of the last days as bars, with the limit as a line: a day limit's own value, or for
 * a longer period the daily pace that reaches it (limit ÷ days in the period). Days over the line
 * are marked. Hovering a day shows its value (an SVG title); tapping it writes it under the chart.
 */
function chart(m, days) {
  if (!days?.length || m.limit === null || ["second", "minute", "hour", "lifetime"].includes(m.period)) return null;
  const periodDays = m.period === "day" ? 1 : Math.max(1, Math.round((Date.parse(m.reset_at) - Date.parse(m.window_start)) / DAY_MS));
  const line = m.limit / periodDays;
  const W = 600, H = 120, pad = 4;
  const top = Math.max(line, ...days.map((d) => d.quantity), 1) * 1.1;
  const bw = W / days.length;
  const y = (v) => H - pad - (v / top) * (H - 2 * pad);
  const box = el("figure", "chart");
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${m.meter} per day, last ${days.length} days` });
  const caption = el("figcaption", "chart-value", m.period === "day" ? `limit ${nf.format(m.limit)} a day` : `pace ${nf.format(Math.round(line))} a day reaches the ${m.period}'s limit`);
  days.forEach((d, i) => {
    const over = d.quantity > line;
    const bar = svg("rect", { x: i * bw + 1, y: y(d.quantity), width: Math.max(bw - 2, 1), height: Math.max(H - pad - y(d.quantity), 0), class: over ? "day over" : "day" });
    bar.dataset.date = d.date;
    bar.dataset.quantity = String(d.quantity);
    const title = svg("title", {});
    title.textContent = `${d.date}: ${nf.format(d.quantity)} ${m.unit}${over ? " (over)" : ""}`;
    bar.append(title);
    bar.addEventListener("click", () => (caption.textContent = title.textContent));
    s.append(bar);
  });
  s.append(svg("line", { x1: 0, x2: W, y1: y(line), y2: y(line), class: "limit-line" }));
  box.append(s, caption);
  return box;
}

function render(u) {
  $("org").textContent = `${u.org_id} · plan ${u.plan}`;
  const main = $("meters");
  main.replaceChildren();
  let worst = "ok";
  const flagged = [];
  for (const m of u.meters) {
    const pct = m.percentage;
    const c = colour(pct);
    if (c !== "green") flagged.push(`${m.policy} at ${pct}%`);
    if (c === "red") worst = "over";
    else if (c === "amber" && worst === "ok") worst = "warning";
    const card = el("section", "limit");
    card.dataset.policy = m.policy;
    card.dataset.colour = c;
    const row = el("div", "row");
    row.append(el("span", "name", `${m.meter} · ${m.period}`));
    const limit = m.limit === null ? "unlimited" : nf.format(m.limit);
    row.append(el("span", "nums", `${nf.format(m.used)} / ${limit} ${m.unit}`));
    const bar = el("div", "bar");
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-label", m.policy);
    bar.setAttribute("aria-valuenow", String(Math.min(pct ?? 0, 100)));
    const fill = el("div", `fill ${c}`);
    fill.style.width = `${Math.min(pct ?? 0, 100)}%`;
    bar.append(fill);
    card.append(row, bar, el("p", "meta", `${pct === null ? "no limit" : pct + "%"} · ${m.mode} · ${when(m.reset_at)}`));
    const ahead = projection(m);
    if (ahead) card.append(el("p", "projection", ahead));
    const figure = chart(m, daily.byMeter[m.meter]);
    if (figure) card.append(figure);
    if (m.mode === "soft" && m.overage > 0) {
      card.append(el("p", "overage", `Overage ${nf.format(m.overage)} ${m.unit} · ${(m.overage_cost_cents / 100).toFixed(2)} in overage charges`));
    }
    main.append(card);
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
  const to = new Date().toISOString().slice(0, 10);
  const from = new Date(Date.now() - (range - 1) * DAY_MS).toISOString().slice(0, 10);
  const admin = c.admin && c.org;
  const byMeter = {};
  for (const meter of new Set(usage.meters.map((m) => m.meter))) {
    const q = `meter=${encodeURIComponent(meter)}&from=${from}&to=${to}`;
    const url = admin ? `/_quota/admin/orgs/${encodeURIComponent(c.org)}/history?${q}` : `/_quota/v1/usage/history?${q}`;
    const headers = admin ? { authorization: `Bearer ${c.admin}` } : { "x-api-key": c.key ?? "" };
    const r = await fetch(url, { headers, cache: "no-store" }).catch(() => null);
    if (r?.ok) byMeter[meter] = (await r.json()).days;
  }
  daily = { key, at: Date.now(), byMeter };
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
