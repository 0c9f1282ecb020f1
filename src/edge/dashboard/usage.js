// Shared by the usage page (app.js) and the operator console (console.js): one meter's card,
// its bar coloured green / amber / red by level, its projection to the period's end, and its chart
// of daily usage drawn as SVG by the page itself. No framework, no network: callers fetch.
"use strict";
const nf = new Intl.NumberFormat("en-US");
const DAY_MS = 86_400_000;
const SVG = "http://www.w3.org/2000/svg";

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

/** One meter's card: bar, numbers, reset, projection, chart (when `days` is given), overage. */
function meterCard(m, days) {
  const pct = m.percentage;
  const c = colour(pct);
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
  const figure = chart(m, days);
  if (figure) card.append(figure);
  if (m.mode === "soft" && m.overage > 0) {
    card.append(el("p", "overage", `Overage ${nf.format(m.overage)} ${m.unit} · ${(m.overage_cost_cents / 100).toFixed(2)} in overage charges`));
  }
  return card;
}

/**
 * Each meter's daily series for the last `range` days, keyed by meter: `url(q)` names the
 * history endpoint for a query, `headers` authenticate. A meter whose read fails is left out.
 */
async function fetchDaily(url, headers, meters, range) {
  const to = new Date().toISOString().slice(0, 10);
  const from = new Date(Date.now() - (range - 1) * DAY_MS).toISOString().slice(0, 10);
  const byMeter = {};
  for (const meter of new Set(meters)) {
    const r = await fetch(url(`meter=${encodeURIComponent(meter)}&from=${from}&to=${to}`), { headers, cache: "no-store" }).catch(() => null);
    if (r?.ok) byMeter[meter] = (await r.json()).days;
  }
  return byMeter;
}
