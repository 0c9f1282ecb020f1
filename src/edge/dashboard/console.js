// The operator console (drawing in usage.js): no framework. Every action is a call of the admin
// API with the admin token typed into the form, which stays in sessionStorage for this tab only
// (never localStorage, never a URL: a sign-in link is cleared unused). A `read` token is shown
// no control that would change anything; the API refuses such changes anyway (403).
// Views are named in the URL's fragment (#orgs, #org/<id>, #plans, #status, #audit), so the
// browser's back button works; the fragment never holds a credential.
"use strict";
const $ = (id) => document.getElementById(id);
const PAGE = 50;
const enc = encodeURIComponent;
/** The signed-in token as the status view names it: {token_id, name, scope}. */
let me = null;
// `seq` numbers the list's requests: only the latest one's answer is shown (pages clicked through
// quickly may be answered out of order).
// `total` is the last answer's: Next never pages past it, however fast it is clicked.
const orgList = { offset: 0, q: "", plan: "", seq: 0, total: 0 };
let org = null;
let plans = [];
let auditBefore = null;
let filterTimer = null;

function token() {
  return sessionStorage.getItem("qga");
}

function headers() {
  return { authorization: `Bearer ${token()}` };
}

/** One admin API call: {ok, status, data}. A 401 signs out. */
async function api(method, path, body) {
  const init = { method, headers: headers(), cache: "no-store" };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(`/_quota/admin/${path}`, init);
  } catch {
    return { ok: false, status: 0, data: { detail: "The gateway could not be reached." } };
  }
  const data = await r.json().catch(() => null);
  if (r.status === 401) signOut("That token was not accepted.");
  return { ok: r.ok, status: r.status, data };
}

function time(iso) {
  if (!iso) return "—";
  return new Date(iso).toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "short", timeZone: "UTC" }) + " UTC";
}

function say(state, text) {
  const s = $("state");
  s.hidden = !text;
  s.className = state;
  s.textContent = text ?? "";
}

function cells(tr, values) {
  for (const v of values) {
    const td = el("td");
    if (v instanceof Node) td.append(v);
    else td.textContent = v ?? "—";
    tr.append(td);
  }
  return tr;
}

// ------------------------------------------------------------------ errors next to their fields

function clearErrors(form) {
  for (const s of form.querySelectorAll(".field-error")) s.textContent = "";
  const result = form.querySelector(".form-result");
  if (result) {
    result.textContent = "";
    result.className = "form-result";
  }
}

/**
 * Shows a refusal beside the field it names (the problem's `field`, e.g. `limits[1].period`):
 * the most specific element whose data-field is that path or a prefix of it; else under the form.
 */
function showError(form, r, aliases = {}) {
  const field = r.data?.field;
  const text = r.data?.detail ?? `The gateway answered ${r.status}.`;
  if (field) {
    const path = aliases[field.split(/[.[]/)[0]] ?? field;
    const spans = [...form.querySelectorAll(".field-error[data-field]")];
    const best = spans
      .filter((s) => path === s.dataset.field || path.startsWith(s.dataset.field + ".") || path.startsWith(s.dataset.field + "["))
      .sort((a, b) => b.dataset.field.length - a.dataset.field.length)[0];
    if (best) {
      best.textContent = text;
      best.scrollIntoView({ block: "nearest" });
      return;
    }
  }
  const result = form.querySelector(".form-result");
  result.className = "form-result error";
  result.textContent = text;
}

function done(form, text) {
  const result = form.querySelector(".form-result");
  result.className = "form-result ok";
  result.textContent = text;
}

// ------------------------------------------------------------------ orgs

async function loadOrgs() {
  const p = new URLSearchParams({ limit: String(PAGE), offset: String(orgList.offset) });
  if (orgList.q) p.set("q", orgList.q);
  if (orgList.plan) p.set("plan", orgList.plan);
  const seq = ++orgList.seq;
  const r = await api("GET", `orgs?${p}`);
  if (seq !== orgList.seq) return; // a later request was made: its answer is the one to show
  if (!r.ok) return say("error", r.data?.detail ?? `The gateway answered ${r.status}.`);
  const { orgs, total, offset } = r.data;
  orgList.total = total;
  $("org-table").tBodies[0].replaceChildren(...orgs.map(orgRow));
  const to = offset + orgs.length;
  $("page-info").textContent = total ? `${nf.format(offset + 1)}–${nf.format(to)} of ${nf.format(total)}` : "no orgs match";
  $("prev").disabled = offset === 0;
  $("next").disabled = to >= total;
}

function orgRow(o) {
  const tr = el("tr");
  tr.dataset.org = o.id;
  const link = el("a", "", o.id);
  link.href = `#org/${enc(o.id)}`;
  const name = el("span");
  name.append(link);
  if (o.name) name.append(el("span", "muted", ` ${o.name}`));
  const level = el("span");
  if (o.level) {
    const c = colour(o.level.percentage);
    tr.dataset.colour = c;
    level.append(el("span", `pill ${c}`, `${o.level.percentage}%`), ` ${o.level.policy}`);
  } else {
    level.append(el("span", "muted", "no usage reported"));
  }
  return cells(tr, [name, o.plan, level]);
}

// ------------------------------------------------------------------ one org

async function loadOrg(id) {
  $("new-key").hidden = true;
  for (const f of [$("org-form"), $("reset-form")]) clearErrors(f);
  const [o, usage] = await Promise.all([api("GET", `orgs/${enc(id)}`), api("GET", `orgs/${enc(id)}/usage`)]);
  if (!o.ok) return say("error", o.data?.detail ?? `The gateway answered ${o.status}.`);
  org = o.data;
  $("org-title").textContent = `${org.id}${org.name ? ` · ${org.name}` : ""} · plan ${org.plan}`;
  const meters = usage.ok ? usage.data.meters : [];
  const history = (q) => `/_quota/admin/orgs/${enc(id)}/history?${q}`;
  const byMeter = await fetchDaily(history, headers(), meters.map((m) => m.meter), Number($("range").value));
  $("meters").replaceChildren(...meters.map((m) => meterCard(m, byMeter[m.meter])));
  const reset = $("reset-meter");
  reset.replaceChildren(new Option("every meter", ""), ...[...new Set(meters.map((m) => m.meter))].map((m) => new Option(m, m)));
  await loadPlans();
  const select = $("org-plan-select");
  select.replaceChildren(...plans.map((p) => new Option(`${p.id} (${p.name})`, p.id)));
  select.value = org.plan;
  $("org-overrides").value = JSON.stringify(org.overrides ?? [], null, 1);
  await loadKeys();
}

async function loadKeys() {
  const r = await api("GET", `orgs/${enc(org.id)}/keys`);
  const rows = (r.ok ? r.data.keys : []).map((k) => {
    const tr = el("tr");
    tr.dataset.key = k.key_id;
    tr.dataset.state = k.state;
    const who = el("span");
    who.append(el("code", "", `${k.prefix}…`), el("span", "muted", ` ${k.key_id}`));
    const action = el("span");
    if (k.state === "active") {
      const b = el("button", "danger small writes", "Revoke");
      b.type = "button";
      b.addEventListener("click", () => revokeKey(k.key_id));
      action.append(b);
    }
    return cells(tr, [who, k.state, time(k.created_at), k.last_used ?? "never", k.expires_at ? time(k.expires_at) : "never", action]);
  });
  $("keys").tBodies[0].replaceChildren(...rows);
}

async function revokeKey(id) {
  if (!confirm(`Revoke ${id}? Requests with it are refused (401) from now on.`)) return;
  const r = await api("DELETE", `orgs/${enc(org.id)}/keys/${enc(id)}`);
  if (!r.ok) say("error", r.data?.detail ?? `The gateway answered ${r.status}.`);
  await loadKeys();
}

async function createKey() {
  const r = await api("POST", `orgs/${enc(org.id)}/keys`, {});
  if (!r.ok) return say("error", r.data?.detail ?? `The gateway answered ${r.status}.`);
  $("new-key-text").textContent = r.data.key;
  $("copied").textContent = "";
  $("new-key").hidden = false;
  await loadKeys();
}

async function copyKey() {
  const text = $("new-key-text").textContent;
  try {
    await navigator.clipboard.writeText(text);
    $("copied").textContent = "copied";
  } catch {
    // No clipboard access (an insecure origin): select it for the operator to copy.
    getSelection().selectAllChildren($("new-key-text"));
    $("copied").textContent = "selected: press Ctrl+C";
  }
}

async function saveOrg(ev) {
  ev.preventDefault();
  const form = $("org-form");
  clearErrors(form);
  let overrides;
  try {
    overrides = JSON.parse($("org-overrides").value || "[]");
  } catch (e) {
    return showError(form, { data: { field: "overrides", detail: `overrides: not valid JSON (${e.message})` } });
  }
  const body = { plan: $("org-plan-select").value, overrides };
  for (const k of ["name", "billing_anchor", "stripe_customer_id", "webhook_url"]) if (org[k] != null) body[k] = org[k];
  const r = await api("PUT", `orgs/${enc(org.id)}`, body);
  if (!r.ok) return showError(form, r);
  await loadOrg(org.id);
  done(form, "Saved.");
}

async function resetMeter(ev) {
  ev.preventDefault();
  const form = $("reset-form");
  clearErrors(form);
  const meter = $("reset-meter").value;
  if (!confirm(`Reset ${meter || "every meter"} of ${org.id}? Its current windows start again from zero.`)) return;
  const r = await api("POST", `orgs/${enc(org.id)}/reset`, meter ? { meter } : {});
  if (!r.ok) return showError(form, r);
  await loadOrg(org.id);
  done(form, `Reset ${meter || "every meter"}.`);
}

// ------------------------------------------------------------------ plans

const PERIODS = ["second", "minute", "hour", "day", "month", "lifetime"];
const PLAN_FIELDS = ["id", "name", "on_failure", "upgrade_url", "limits", "created_at", "updated_at", "version", "orgs", "adopted_within_secs"];

async function loadPlans() {
  const r = await api("GET", "plans");
  if (!r.ok) return;
  plans = r.data.plans;
  const list = $("plan-list");
  const chip = (label, plan) => {
    const li = el("li");
    const b = el("button", "secondary", label);
    b.type = "button";
    b.addEventListener("click", () => editPlan(plan));
    li.append(b);
    return li;
  };
  list.replaceChildren(...plans.map((p) => chip(`${p.id} · v${p.version}`, p)), chip("New plan", null));
  const filter = $("org-plan");
  const chosen = filter.value;
  filter.replaceChildren(new Option("any plan", ""), ...plans.map((p) => new Option(p.id, p.id)));
  filter.value = chosen;
}

function limitRow(limit = { meter: "", period: "month", limit: null, mode: "hard" }) {
  const tr = el("tr", "limit-row");
  const { meter, period, limit: n, mode, ...extra } = limit;
  tr.dataset.extra = JSON.stringify(extra);
  const input = (name, value) => {
    const i = el("input");
    i.name = name;
    i.value = value ?? "";
    i.spellcheck = false;
    return i;
  };
  const select = (name, options, value) => {
    const s = el("select");
    s.name = name;
    s.replaceChildren(...options.map((o) => new Option(o, o)));
    s.value = value ?? options[0];
    return s;
  };
  const remove = el("button", "secondary small writes", "Remove");
  remove.type = "button";
  remove.addEventListener("click", () => {
    tr.remove();
    numberRows();
  });
  for (const field of [input("meter", meter), select("period", PERIODS, period), input("limit", n === null ? "" : String(n)), select("mode", ["hard", "soft"], mode), remove]) {
    const td = el("td");
    td.append(field, el("span", "field-error"));
    tr.append(td);
  }
  return tr;
}

/** Each row's error spans name its path: limits[i].meter …, and limits[i] for the rest. */
function numberRows() {
  [...$("limit-rows").tBodies[0].rows].forEach((tr, i) => {
    for (const td of tr.cells) {
      const control = td.querySelector("input, select");
      td.querySelector(".field-error").dataset.field = control ? `limits[${i}].${control.name}` : `limits[${i}]`;
    }
  });
}

function editPlan(p) {
  const form = $("plan-form");
  clearErrors(form);
  $("plan-heading").textContent = p ? `Plan ${p.id}` : "New plan";
  $("plan-id").value = p?.id ?? "";
  $("plan-id").readOnly = !!p;
  $("plan-name").value = p?.name ?? "";
  $("plan-on-failure").value = p?.on_failure ?? "closed";
  $("plan-upgrade-url").value = p?.upgrade_url ?? "";
  $("limit-rows").tBodies[0].replaceChildren(...(p?.limits ?? [undefined]).map((l) => limitRow(l)));
  numberRows();
  const extra = Object.fromEntries(Object.entries(p ?? {}).filter(([k]) => !PLAN_FIELDS.includes(k)));
  $("plan-extra").value = Object.keys(extra).length ? JSON.stringify(extra, null, 1) : "";
}

async function savePlan(ev) {
  ev.preventDefault();
  const form = $("plan-form");
  clearErrors(form);
  let extra = {};
  try {
    extra = $("plan-extra").value.trim() ? JSON.parse($("plan-extra").value) : {};
  } catch (e) {
    return showError(form, { data: { field: "extra", detail: `not valid JSON (${e.message})` } });
  }
  const limits = [...$("limit-rows").tBodies[0].rows].map((tr) => {
    const v = (name) => tr.querySelector(`[name=${name}]`).value.trim();
    const n = v("limit");
    // A number the server checks (range, whole); text it cannot read is sent as text to be named.
    const limit = n === "" ? null : /^\d+$/.test(n) ? Number(n) : n;
    return { ...JSON.parse(tr.dataset.extra || "{}"), meter: v("meter"), period: v("period"), limit, mode: v("mode") };
  });
  const doc = { ...extra, name: $("plan-name").value.trim() || undefined, on_failure: $("plan-on-failure").value, limits };
  if ($("plan-upgrade-url").value.trim()) doc.upgrade_url = $("plan-upgrade-url").value.trim();
  const id = $("plan-id").value.trim();
  if (!id) return showError(form, { data: { field: "id", detail: "id: a plan needs an id" } });
  const r = await api("PUT", `plans/${enc(id)}`, doc);
  // Fields of the JSON box are named by their own keys (meters[0].unit, lease.ttl_secs).
  if (!r.ok) return showError(form, r, { meters: "extra", lease: "extra", "plan id in the path": "id" });
  await loadPlans();
  editPlan(plans.find((p) => p.id === id));
  done(form, `Saved: version ${r.data.version}, ${r.data.orgs} org(s) adopt it within ${r.data.adopted_within_secs} s.`);
}

// ------------------------------------------------------------------ alerts, ledger, Stripe, audit

function terms(dl, pairs) {
  dl.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", "", k), el("dd", "", String(v))]));
}

async function loadStatus() {
  const r = await api("GET", "status");
  if (!r.ok) return say("error", r.data?.detail ?? `The gateway answered ${r.status}.`);
  const { ledger, stripe, alerts } = r.data;
  terms($("ledger-health"), [
    ["Events not yet in the ledger", nf.format(ledger.pending_events)],
    ["Orgs with a backlog", ledger.orgs_pending],
    ["Orgs whose flushes fail", ledger.orgs_failing],
    ["Last flush", time(ledger.last_flush_at)],
  ]);
  terms($("stripe-health"), [
    ["Breaker", stripe.breaker_open ? `open until ${time(stripe.open_until)}` : "closed"],
    ["Consecutive failures", stripe.consecutive_failures],
    ["Batches pending", stripe.pending_batches],
    ["Batches expired", stripe.expired_batches],
  ]);
  $("stripe-health").dataset.breaker = stripe.breaker_open ? "open" : "closed";
  const rows = alerts.map((a) => {
    const tr = el("tr");
    tr.dataset.outcome = a.outcome;
    const delivery = `${a.outcome}${a.status_code ? ` (${a.status_code})` : ""}${a.error ? `: ${a.error}` : ""}`;
    return cells(tr, [time(a.at), a.org_id, a.alert_id, delivery, a.attempts]);
  });
  $("alerts").tBodies[0].replaceChildren(...(rows.length ? rows : [cells(el("tr"), ["no alerts yet", "", "", "", ""])]));
}

async function loadAudit(more = false) {
  const p = new URLSearchParams({ limit: "50" });
  if (more && auditBefore !== null) p.set("before", String(auditBefore));
  const r = await api("GET", `audit?${p}`);
  if (!r.ok) return say("error", r.data?.detail ?? `The gateway answered ${r.status}.`);
  const rows = r.data.entries.map((a) => cells(el("tr"), [time(a.at), a.token_name, a.action, a.target, a.status ?? "unknown", a.summary]));
  const body = $("audit").tBodies[0];
  if (more) body.append(...rows);
  else body.replaceChildren(...rows);
  auditBefore = r.data.next_before;
  $("audit-more").hidden = auditBefore === null;
}

// ------------------------------------------------------------------ navigation and sign-in

/** The view the fragment names: #orgs (the default), #org/<id>, #plans, #status, #audit. */
async function route() {
  if (!me) return;
  const [name, arg] = location.hash.slice(1).split("/");
  const view = { org: "org", plans: "plans", status: "status", audit: "audit" }[name] ?? "orgs";
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== `view-${view}`;
  for (const b of document.querySelectorAll("#tabs [data-view]")) b.setAttribute("aria-current", String(b.dataset.view === (view === "org" ? "orgs" : view)));
  say("", "");
  if (view === "orgs") {
    await loadPlans();
    await loadOrgs();
  } else if (view === "org") await loadOrg(decodeURIComponent(arg ?? ""));
  else if (view === "plans") {
    await loadPlans();
    editPlan(null);
  } else if (view === "status") await loadStatus();
  else await loadAudit();
}

async function start() {
  const signedIn = !!token();
  $("auth").hidden = signedIn;
  if (!signedIn) return;
  // Who the token is, and whether it may write.
  const r = await api("GET", "status");
  if (!r.ok) return r.status === 401 || say("error", r.data?.detail ?? `The gateway answered ${r.status}.`);
  me = r.data.you;
  $("tabs").hidden = false;
  document.body.classList.toggle("read-only", me.scope === "read");
  $("who").textContent = `${me.name} · ${me.scope === "read" ? "read only" : "read and write"}`;
  await route();
}

function signOut(why) {
  sessionStorage.removeItem("qga");
  me = null;
  for (const v of document.querySelectorAll(".view")) v.hidden = true;
  $("who").textContent = "";
  $("auth").hidden = false;
  $("tabs").hidden = true;
  say(why ? "error" : "", why ?? "");
}

$("auth").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("qga", $("token").value.trim());
  $("token").value = "";
  start();
});
$("signout").addEventListener("click", () => signOut());
for (const b of document.querySelectorAll("#tabs [data-view]")) b.addEventListener("click", () => (location.hash = b.dataset.view));
window.addEventListener("hashchange", route);
$("org-filter").addEventListener("input", () => {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(() => {
    orgList.q = $("org-filter").value.trim();
    orgList.offset = 0;
    loadOrgs();
  }, 250);
});
$("org-plan").addEventListener("change", () => {
  orgList.plan = $("org-plan").value;
  orgList.offset = 0;
  loadOrgs();
});
$("prev").addEventListener("click", () => {
  orgList.offset = Math.max(0, orgList.offset - PAGE);
  loadOrgs();
});
$("next").addEventListener("click", () => {
  if (orgList.offset + PAGE >= orgList.total) return;
  orgList.offset += PAGE;
  loadOrgs();
});
$("back").addEventListener("click", () => (location.hash = "orgs"));
$("range").addEventListener("change", () => org && loadOrg(org.id));
$("key-create").addEventListener("click", createKey);
$("copy-key").addEventListener("click", copyKey);
$("org-form").addEventListener("submit", saveOrg);
$("reset-form").addEventListener("submit", resetMeter);
$("add-limit").addEventListener("click", () => {
  $("limit-rows").tBodies[0].append(limitRow());
  numberRows();
});
$("plan-form").addEventListener("submit", savePlan);
$("audit-more").addEventListener("click", () => loadAudit(true));

const link = new URLSearchParams(location.hash.slice(1));
if (link.has("token") || link.has("admin")) {
  // A token in a link stays in the browser's history: cleared at once, never used.
  history.replaceState(null, "", location.pathname);
  signOut("Sign-in links are not accepted: a token in a URL stays in the browser's history. Sign in with the form.");
} else {
  start();
}
