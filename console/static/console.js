// spendgate operator console. Plain JavaScript, no framework, no build step, no CDN.
//
// The page holds no data of its own: everything it shows comes from the app's
// function-key-protected admin routes, called with the key the operator pasted. That
// key lives in sessionStorage only and travels only in the x-functions-key header: it
// is never put in a URL (so never in a server log, history or referrer).
"use strict";

(() => {
  const API = "/api";
  const KEY_STORE = "spendgate.functionKey";
  const APPROVER_STORE = "spendgate.approver"; // who decides approvals in this tab (not a secret)
  const POLL_MS = 1500;
  const PAGE_SIZE = 25;
  const AUDIT_PAGE = 50;
  const ITEMS_PAGE = 50;

  // Decision codes of the audit log, in plain words. "Allowed" ones reached Stripe (or
  // replayed a saved answer); every other code is a denial from the error catalog.
  const DECISIONS = {
    forwarded: "Allowed: sent to Stripe",
    replayed: "Allowed: repeat request, saved answer replayed (no new charge)",
    vault_key_invalid: "Denied: unknown, malformed or wrong key",
    vault_key_revoked: "Denied: the key was revoked",
    vault_key_expired: "Denied: the key has expired",
    endpoint_not_allowed: "Denied: endpoint not on the key's allowlist",
    spend_cap_exceeded: "Denied: would go over the spend cap",
    amount_invalid: "Denied: amount missing or invalid",
    currency_not_allowed: "Denied: currency not allowed (caps are in USD)",
    body_invalid: "Denied: request body could not be read",
    body_too_large: "Denied: request body too large",
    path_invalid: "Denied: path not forwardable",
    method_not_allowed: "Denied: HTTP method not supported",
    idempotency_key_in_use: "Denied: same idempotency key still in flight (safe to retry)",
    idempotency_error: "Denied: idempotency key reused with different parameters",
    governance_unavailable: "Denied: spend ledger unreachable, nothing forwarded (safe to retry)",
    upstream_unavailable: "Failed: Stripe unreachable or unclear answer (safe to retry)",
    approval_required: "Held: above the key's approval threshold, waits for a person (nothing sent)",
    approval_rejected: "Denied: a person rejected this charge",
    approval_expired: "Denied: nobody approved this charge in time",
  };
  const ALLOWED_DECISIONS = new Set(["forwarded", "replayed"]);

  // Billing-run item outcomes (billing.payloads.ItemOutcome) and stop reasons, in plain words.
  const OUTCOMES = {
    charged: "Charged",
    succeeded: "Charged",
    declined: "Card declined",
    cap_exceeded: "Run cap reached",
    revoked: "Key revoked",
    expired: "Key expired",
    invalid: "Refused as invalid",
    transient_exhausted: "Unconfirmed: still failing after all retries",
    skipped: "Skipped: run had stopped",
    stopped: "Stopped by an operator",
    rejected: "Rejected by an approver",
    approval_timeout: "Nobody approved it in time",
  };
  const outcomeWords = (code) => OUTCOMES[code] || words(code);

  const $ = (sel, root = document) => root.querySelector(sel);

  /** Build an element; children may be strings (always inserted as text, never HTML). */
  function h(tag, attrs = {}, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") el.className = value;
      else if (name === "text") el.textContent = value;
      else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  /** Rebuild `el` only when what it shows changed, so nothing under the pointer is replaced needlessly. */
  function renderIfChanged(el, data, build) {
    const sig = JSON.stringify(data);
    if (el.dataset.sig === sig) return;
    el.dataset.sig = sig;
    build();
  }

  // ---------------------------------------------------------------- formatting
  const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
  function money(cents, currency = "usd") {
    if (num(cents) === null) return "–";
    const cur = String(currency || "usd").toUpperCase();
    try {
      return new Intl.NumberFormat("en-US", { style: "currency", currency: cur }).format(cents / 100);
    } catch (_) {
      return `${(cents / 100).toFixed(2)} ${cur}`;
    }
  }
  function when(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return d.toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  }
  function relative(iso) {
    if (!iso) return "";
    const ms = new Date(iso).getTime() - Date.now();
    if (Number.isNaN(ms)) return "";
    const abs = Math.abs(ms);
    const unit = abs >= 86400e3 ? ["day", 86400e3] : abs >= 3600e3 ? ["hour", 3600e3] : abs >= 60e3 ? ["minute", 60e3] : ["second", 1e3];
    const n = Math.round(abs / unit[1]);
    const s = `${n} ${unit[0]}${n === 1 ? "" : "s"}`;
    return ms >= 0 ? `in ${s}` : `${s} ago`;
  }
  const words = (code) => String(code || "").replace(/_/g, " ");

  /** A bar of spent (solid) plus pending (light) against a cap. */
  function spendBar(spent, pending, cap, big = false) {
    const bar = h("div", { class: `bar${big ? " bar-big" : ""}`, role: "meter", "aria-valuemin": 0 });
    const s = h("span", { class: "spent" });
    const p = h("span", { class: "pending" });
    bar.append(s, p);
    setBar(bar, spent, pending, cap);
    return bar;
  }
  function setBar(bar, spent, pending, cap) {
    const c = num(cap) && cap > 0 ? cap : null;
    const sp = num(spent) || 0;
    const pe = num(pending) || 0;
    const pct = (v) => (c ? Math.max(0, Math.min(100, (v / c) * 100)) : 0);
    const [s, p] = bar.children;
    s.style.width = `${pct(sp)}%`;
    p.style.width = `${Math.min(pct(pe), 100 - pct(sp))}%`;
    bar.classList.toggle("near", !!c && sp + pe >= 0.8 * c && sp < c);
    bar.classList.toggle("full", !!c && sp >= c);
    bar.setAttribute("aria-valuemax", c || 0);
    bar.setAttribute("aria-valuenow", sp);
    bar.dataset.spent = sp;
    bar.dataset.pending = pe;
    bar.dataset.cap = c === null ? "" : c;
  }
  function spendText(spent, pending, cap, capName = "") {
    const parts = [`${money(num(spent) || 0)} spent`];
    if (num(pending)) parts.push(`${money(pending)} pending`);
    parts.push(num(cap) ? `of ${money(cap)} ${capName ? `${capName} ` : ""}cap` : "no cap reported");
    return parts.join(" + ").replace(" + of", " of");
  }
  /** A key's meters (daily window, and lifetime total if set); the binding one first. */
  function keyMeters(k) {
    const meters = [];
    if (num(k.daily_cap_cents ?? k.cap_cents)) {
      meters.push({ name: "daily", spent: k.spent_cents, pending: k.pending_cents, cap: k.daily_cap_cents ?? k.cap_cents });
    }
    if (num(k.total_cap_cents)) {
      meters.push({ name: "total", spent: k.total_spent_cents, pending: k.total_pending_cents, cap: k.total_cap_cents });
    }
    const used = (m) => ((num(m.spent) || 0) + (num(m.pending) || 0)) / m.cap;
    return meters.sort((a, b) => used(b) - used(a));
  }
  /** A progress bar (done of total). */
  function progressBar(done, total) {
    const bar = h("div", { class: "bar", role: "progressbar", "aria-valuemin": 0 });
    bar.append(h("span", { class: "done" }));
    setProgress(bar, done, total);
    return bar;
  }
  function setProgress(bar, done, total) {
    const t = num(total) || 0;
    const d = num(done) || 0;
    bar.firstChild.style.width = `${t ? Math.min(100, (d / t) * 100) : 0}%`;
    bar.setAttribute("aria-valuemax", t);
    bar.setAttribute("aria-valuenow", d);
    bar.dataset.done = d;
    bar.dataset.total = t;
  }

  // ---------------------------------------------------------------- API access
  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }
  const functionKey = () => sessionStorage.getItem(KEY_STORE);
  // The admin routes never answer 401 themselves: a 401 is the host refusing the key
  // (Azure sends an empty body, devhost a JSON one).
  const keyRefused = (e) => e instanceof ApiError && (e.status === 401 || (e.status === 403 && !e.code));

  /** Call an admin route with the function key in the x-functions-key header. */
  async function api(method, path, params, payload) {
    const key = functionKey();
    if (!key) throw new ApiError(401, "no_key", "No function key.");
    let url = API + path;
    if (params) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
      const qs = q.toString();
      if (qs) url += `?${qs}`;
    }
    let resp;
    try {
      const headers = { "x-functions-key": key, Accept: "application/json" };
      if (payload !== undefined) headers["Content-Type"] = "application/json";
      resp = await fetch(url, {
        method,
        headers,
        body: payload === undefined ? undefined : JSON.stringify(payload),
        cache: "no-store",
        credentials: "omit",
        referrerPolicy: "no-referrer",
      });
    } catch (_) {
      throw new ApiError(0, "network", "Cannot reach the app. Is it running?");
    }
    const text = await resp.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (_) {
      body = null;
    }
    if (!resp.ok) {
      const err = body && body.error ? body.error : {};
      const msg = err.message || (resp.status === 401 || resp.status === 403 ? "The function key was refused." : `HTTP ${resp.status}`);
      throw new ApiError(resp.status, err.code || null, msg);
    }
    return body;
  }

  // ---------------------------------------------------------------- state & routing
  const state = {
    route: { view: "keys", id: null },
    keys: { label: "", pager: newPager(), data: [] },
    runs: { pager: newPager(), data: [] },
    audit: { filter: "all", pager: newPager(), keyId: null },
    items: { filter: "all", page: 0 },
    results: {}, // last admin action result per object id
    runSpend: {}, // spend of finished runs (no longer changes)
    busy: false,
    lastOk: null,
  };
  function newPager() {
    return { stack: [], current: null, next: null };
  }

  function parseRoute() {
    const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
    if (parts[0] === "runs") return { view: parts[1] ? "run" : "runs", id: parts[1] || null, anchor: parts[2] || null };
    if (parts[0] === "approvals") return { view: "approvals", id: null };
    return { view: parts[1] ? "key" : "keys", id: parts[1] || null };
  }

  const VIEWS = ["keys", "key", "runs", "run", "approvals"];
  function showOnly(id) {
    for (const v of VIEWS) $(`#view-${v}`).hidden = v !== id;
    $("#signin").hidden = id !== "signin";
    const signedIn = id !== "signin";
    $("#nav").hidden = !signedIn;
    $("#live").hidden = !signedIn;
    $("#signout").hidden = !signedIn;
    const section = id === "key" || id === "keys" ? "keys" : id === "approvals" ? "approvals" : "runs";
    for (const a of document.querySelectorAll("[data-nav]")) {
      if (signedIn && a.dataset.nav === section) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
  }

  function pageError(message) {
    const el = $("#page-error");
    el.textContent = message || "";
    el.hidden = !message;
  }
  let toastTimer = null;
  function toast(message) {
    const el = $("#toast");
    el.textContent = message;
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => (el.hidden = true), 4000);
  }

  /** Drop the key and go back to the prompt, with a reason. */
  function signOut(message) {
    sessionStorage.removeItem(KEY_STORE);
    showOnly("signin");
    pageError("");
    const err = $("#signin-error");
    err.textContent = message || "";
    err.hidden = !message;
    $("#function-key").value = "";
    $("#function-key").focus();
  }

  function explain(e) {
    if (e instanceof ApiError) {
      if (keyRefused(e)) {
        return "The function key was refused (HTTP " + e.status + "). Paste the app's function key or host key.";
      }
      return e.code ? `${e.message} (${e.code}, HTTP ${e.status})` : e.message;
    }
    return String(e && e.message ? e.message : e);
  }

  // ---------------------------------------------------------------- views
  function meterCells(m, big = false) {
    if (!m) return [spendBar(0, 0, null, big), h("div", { class: "bar-text" }, "no cap reported")];
    return [spendBar(m.spent, m.pending, m.cap, big), h("div", { class: "bar-text" }, spendText(m.spent, m.pending, m.cap, m.name))];
  }

  function keyRow(k) {
    const status = k.status || "unknown";
    const tr = h("tr", { class: "clickable", "data-key-id": k.key_id, onclick: () => (location.hash = `#/keys/${encodeURIComponent(k.key_id)}`) },
      h("td", { "data-label": "Label" }, h("a", { href: `#/keys/${encodeURIComponent(k.key_id)}` }, k.label || "(no label)"), h("span", { class: "sub mono" }, k.key_id)),
      h("td", { "data-label": "Status" }, h("span", { class: `badge ${status}` }, status)),
      h("td", { "data-label": "Expires" }, k.expires_at ? [relative(k.expires_at), h("span", { class: "sub" }, when(k.expires_at))] : "never"),
      h("td", { "data-label": "Spent + pending of cap" }, ...meterCells(keyMeters(k)[0])),
    );
    return tr;
  }

  function renderPager(el, pager, onMove, count) {
    const sig = JSON.stringify([pager.stack.length, !!pager.next, count]);
    if (el.dataset.sig === sig) return;
    el.dataset.sig = sig;
    el.replaceChildren(
      h("span", {}, `Page ${pager.stack.length + 1}${count !== undefined ? ` · ${count} shown` : ""}`),
      h("button", { class: "btn", type: "button", disabled: pager.stack.length === 0, onclick: () => onMove(-1) }, "← Previous"),
      h("button", { class: "btn", type: "button", disabled: !pager.next, onclick: () => onMove(1) }, "Next →"),
    );
  }
  /**
   * What a list request asked for. A response is dropped when the filter or page moved while it was in
   * flight: the change itself called refresh(), so the newer request renders instead of the stale one.
   */
  function asked(s) {
    return { pager: s.pager, current: s.pager.current, label: s.label, keyId: s.keyId };
  }
  function stale(s, ask) {
    return s.pager !== ask.pager || s.pager.current !== ask.current || s.label !== ask.label || s.keyId !== ask.keyId;
  }
  function movePager(pager, dir) {
    if (dir > 0 && pager.next) {
      pager.stack.push(pager.current);
      pager.current = pager.next;
    } else if (dir < 0 && pager.stack.length) {
      pager.current = pager.stack.pop();
    }
  }

  async function loadKeys() {
    const s = state.keys;
    const ask = asked(s);
    const page = await api("GET", "/vault/keys", { label: s.label, limit: PAGE_SIZE, continuation: s.pager.current });
    if (stale(s, ask)) return;
    s.pager.next = page.continuation || null;
    s.data = page.data || [];
    const tbody = $("#keys-table tbody");
    renderIfChanged(tbody, s.data, () => tbody.replaceChildren(...s.data.map(keyRow)));
    $("#keys-empty").hidden = s.data.length > 0;
    renderPager($("#keys-pager"), s.pager, (d) => { movePager(s.pager, d); refresh(); }, s.data.length);
  }

  function resultBox(res) {
    if (!res) return null;
    return h("div", { class: `result${res.ok ? "" : " bad"}`, role: "status", "data-testid": "action-result" },
      h("strong", {}, res.title), h("pre", {}, res.detail));
  }

  function fact(label, value) {
    return h("div", {}, h("dt", {}, label), h("dd", {}, value));
  }

  async function loadKey(id) {
    const k = await api("GET", `/vault/keys/${encodeURIComponent(id)}`);
    renderIfChanged($("#key-card"), [k, state.results[k.key_id] || null], () => renderKey(k));
    await loadKeyAlerts(k.key_id);
    await loadAudit(k.key_id);
  }

  function renderKey(k) {
    const status = k.status || "unknown";
    const revokeBtn = h("button", {
      class: "btn btn-danger", type: "button", id: "revoke", disabled: status === "revoked",
      onclick: () => confirmThen({
        title: "Revoke this key?",
        text: `Key "${k.label || k.key_id}" (${k.key_id}) will be refused from the moment the app answers. Requests already sent to Stripe finish; no new one starts. This cannot be undone.`,
        ok: "Revoke key",
        run: () => api("DELETE", `/vault/keys/${encodeURIComponent(k.key_id)}`),
        id: k.key_id,
        done: (r) => `Revoked: status ${r.status || "?"}${r.revoked_at ? ` at ${when(r.revoked_at)}` : ""}`,
      }),
    }, status === "revoked" ? "Revoked" : "Revoke key");
    const meters = h("div", { class: "meters" }, keyMeters(k).map((m) => h("div", { "data-meter": m.name }, ...meterCells(m, true))));
    const endpoints = k.allowed_endpoints || (k.policy && k.policy.allowed_endpoints) || [];
    $("#key-card").replaceChildren(
      h("div", { class: "title-row" },
        h("h1", {}, k.label || "(no label)", " ", h("span", { class: `badge ${status}`, id: "key-status" }, status)),
        revokeBtn),
      meters,
      h("dl", { class: "facts" },
        fact("Key id", h("code", {}, k.key_id)),
        fact("Remaining", money(k.remaining_cents)),
        fact("Daily cap", `${money(k.daily_cap_cents)}${k.window_day ? ` (day ${k.window_day} UTC)` : ""}`),
        fact("Total cap", num(k.total_cap_cents) ? money(k.total_cap_cents) : "none"),
        fact("Expires", k.expires_at ? `${when(k.expires_at)} (${relative(k.expires_at)})` : "never"),
        k.revoked_at ? fact("Revoked", when(k.revoked_at)) : null,
        fact("Allowed endpoints", endpoints.length ? h("span", { class: "mono" }, endpoints.join(", ")) : "–"),
      ),
      resultBox(state.results[k.key_id]) || "",
    );
  }

  async function loadAudit(keyId) {
    const s = state.audit;
    if (s.keyId !== keyId) Object.assign(s, { keyId, pager: newPager(), filter: "all" });
    const ask = asked(s);
    const page = await api("GET", `/vault/keys/${encodeURIComponent(keyId)}/audit`, { limit: AUDIT_PAGE, continuation: s.pager.current });
    if (stale(s, ask)) return;
    s.pager.next = page.continuation || null;
    const rows = (page.data || []).filter((r) => {
      const allowed = ALLOWED_DECISIONS.has(r.decision);
      return s.filter === "all" || (s.filter === "allowed") === allowed;
    });
    for (const b of document.querySelectorAll("#audit-filter [data-filter]")) b.setAttribute("aria-pressed", String(b.dataset.filter === s.filter));
    const auditBody = $("#audit-table tbody");
    renderIfChanged(auditBody, rows, () => auditBody.replaceChildren(...rows.map((r) => {
      const allowed = ALLOWED_DECISIONS.has(r.decision);
      const result = [r.upstream_status ? `Stripe ${r.upstream_status}` : "not sent to Stripe", r.stripe_object_id ? h("span", { class: "sub mono" }, r.stripe_object_id) : null];
      return h("tr", { "data-decision": r.decision },
        h("td", { "data-label": "Time" }, when(r.time), h("span", { class: "sub" }, relative(r.time))),
        h("td", { "data-label": "Decision" }, h("span", { class: `badge ${allowed ? "allowed" : "denied"}` }, allowed ? "allowed" : "denied"), " ",
          DECISIONS[r.decision] || `${allowed ? "Allowed" : "Denied"}: ${words(r.decision)}`),
        h("td", { "data-label": "Request" }, h("span", { class: "mono" }, `${r.method || ""} ${r.path || ""}`), r.idempotency_key ? h("span", { class: "sub mono" }, `idem ${r.idempotency_key}`) : null),
        h("td", { "data-label": "Amount" }, num(r.amount) ? money(r.amount, r.currency) : "–"),
        h("td", { "data-label": "Result" }, ...result),
      );
    })));
    $("#audit-empty").hidden = rows.length > 0;
    renderPager($("#audit-pager"), s.pager, (d) => { movePager(s.pager, d); refresh(); });
  }

  /** Normalise a billing run as returned by the billing routes (tolerates field spellings). */
  function runInfo(r) {
    const cs = (r && (r.progress || r.custom_status || r.customStatus)) || {};
    const out = (r && r.output && typeof r.output === "object" ? r.output : null) || {};
    const pick = (...vals) => vals.find((v) => v !== undefined && v !== null);
    const skipped = pick(cs.skipped_by_reason, cs.skipped, out.skipped_by_reason, out.skipped) || {};
    return {
      id: pick(r.instance_id, r.instanceId, r.id),
      status: String(pick(r.runtime_status, r.runtimeStatus, r.status, "unknown")).toLowerCase(),
      created: pick(r.created_time, r.createdTime, r.created_at),
      updated: pick(r.last_updated_time, r.lastUpdatedTime, r.updated_at),
      done: pick(cs.done, out.done),
      total: pick(cs.total, out.total),
      charged: pick(cs.charged, out.charged),
      spent: pick(cs.spent_cents, cs.spent, out.spent_cents, out.spent),
      cap: pick(cs.cap_cents, cs.cap, out.cap_cents, out.cap, r.input && r.input.cap_cents),
      skipped: typeof skipped === "number" ? { skipped } : skipped,
      stopped: pick(cs.stopped, out.stopped),
      omitted: out.items_omitted || null,
      label: pick(cs.label, out.label, r.input && r.input.label, r.label),
      items: pick(out.items, out.results, r.items) || [],
      awaiting: cs.status === "awaiting_approval" && (!r.approval || r.approval.waiting !== false),
      approval: r.approval || out.approval || null,
      raw: r,
    };
  }
  const RUNNING = new Set(["running", "pending", "continuedasnew"]);
  function skippedList(skipped) {
    const entries = Object.entries(skipped || {}).filter(([, n]) => n);
    if (!entries.length) return h("span", {}, "none");
    return h("ul", { class: "reasons" }, entries.map(([reason, n]) => h("li", {}, `${outcomeWords(reason)}: ${n}`)));
  }

  function runRow(r) {
    const x = runInfo(r);
    return h("tr", { class: "clickable", "data-run-id": x.id, onclick: () => (location.hash = `#/runs/${encodeURIComponent(x.id)}`) },
      h("td", { "data-label": "Run" }, h("a", { href: `#/runs/${encodeURIComponent(x.id)}` }, x.id),
        h("span", { class: "sub" }, x.created ? `started ${when(x.created)} · ` : "", h("a", { href: `#/runs/${encodeURIComponent(x.id)}/items`, class: "items-link" }, "per-item outcomes"))),
      h("td", { "data-label": "Status" }, x.awaiting ? h("span", { class: "badge awaiting" }, "awaiting approval") : h("span", { class: `badge ${x.status}` }, x.status), x.stopped ? h("span", { class: "sub" }, `stopped: ${outcomeWords(x.stopped)}`) : null),
      h("td", { "data-label": "Progress" }, progressBar(x.done, x.total), h("div", { class: "bar-text" }, `${num(x.done) ?? "–"} / ${num(x.total) ?? "–"} done · ${num(x.charged) ?? 0} charged`),
        Object.values(x.skipped || {}).some(Boolean)
          ? h("div", { class: "bar-text" }, `skipped: ${Object.entries(x.skipped).filter(([, n]) => n).map(([why, n]) => `${n} (${outcomeWords(why)})`).join(", ")}`)
          : null),
      h("td", { "data-label": "Spent of cap" }, spendBar(x.spent, 0, x.cap), h("div", { class: "bar-text" }, spendText(x.spent, 0, x.cap))),
    );
  }

  async function loadRuns() {
    const s = state.runs;
    const ask = asked(s);
    const page = await api("GET", "/billing/runs", { limit: PAGE_SIZE, continuation: s.pager.current });
    if (stale(s, ask)) return;
    s.pager.next = page.continuation || null;
    s.data = page.data || [];
    const runsBody = $("#runs-table tbody");
    renderIfChanged(runsBody, s.data, () => runsBody.replaceChildren(...s.data.map(runRow)));
    $("#runs-empty").hidden = s.data.length > 0;
    renderPager($("#runs-pager"), s.pager, (d) => { movePager(s.pager, d); refresh(); }, s.data.length);
  }

  async function loadRun(id) {
    const r = await api("GET", `/billing/runs/${encodeURIComponent(id)}`);
    const x = runInfo(r);
    const running = RUNNING.has(x.status);
    // The run's key (label azure-durable/{id}): its counters move with every charge
    // (spent + pending reservations) while the run's own progress moves once per batch.
    // Polled while the run goes; fetched once after it ended (for the key links).
    let live = state.runSpend[x.id];
    if (running || !live) {
      live = await api("GET", `/billing/runs/${encodeURIComponent(x.id)}/spend`).catch(() => null);
      if (!running && live) state.runSpend[x.id] = live;
    }
    // Everything is fetched: render in one go, so no half-updated view is ever shown.
    renderRun(x, running, live);
  }

  function renderRun(x, running, live) {
    const stopBtn = h("button", {
      class: "btn btn-danger", type: "button", id: "stop", disabled: !running,
      onclick: () => confirmThen({
        title: "Stop this billing run?",
        text: `Run ${x.id} stops now: its keys are revoked first, so no new charge reaches Stripe, then the run is terminated. Charges already at Stripe finish.`,
        ok: "Stop run",
        run: () => api("POST", `/billing/runs/${encodeURIComponent(x.id)}/stop`),
        id: x.id,
        done: (res) => {
          const keys = Array.isArray(res.revoked_key_ids) ? res.revoked_key_ids.length : 0;
          return `Stopped: ${res.terminated ? "run terminated" : "run had already finished"}, ${keys} run key${keys === 1 ? "" : "s"} revoked`;
        },
      }),
    }, running ? "Stop run" : "Not running");

    // Keep the same bar elements between refreshes so their widths animate as the run moves.
    const card = $("#run-card");
    if (card.dataset.runId !== x.id) {
      card.dataset.runId = x.id;
      card.replaceChildren(
        h("div", { class: "title-row" }, h("h1", {}, "Run ", h("code", {}, x.id), " ", h("span", { class: "badge", id: "run-status" })), h("span", { id: "stop-slot" })),
        h("div", { class: "meters" },
          h("div", {}, h("div", { class: "bar-text" }, "Progress"), Object.assign(progressBar(0, 0), { id: "run-progress" }), h("div", { class: "bar-text", id: "run-progress-text" })),
          h("div", {}, h("div", { class: "bar-text" }, "Spent of cap"), Object.assign(spendBar(0, 0, 0, true), { id: "run-spend" }), h("div", { class: "bar-text", id: "run-spend-text" })),
        ),
        h("dl", { class: "facts", id: "run-facts" }),
        h("div", { id: "run-result" }),
      );
    }
    const badge = $("#run-status");
    badge.className = `badge ${x.status}`;
    badge.textContent = x.status;
    renderIfChanged($("#stop-slot"), [x.id, running, x.awaiting], () => $("#stop-slot").replaceChildren(
      ...(x.awaiting ? runDecisionButtons(x.id, `Run ${x.id}`) : []), stopBtn));
    if (x.awaiting) {
      badge.className = "badge awaiting";
      badge.textContent = "awaiting approval";
    }
    setProgress($("#run-progress"), x.done, x.total);
    $("#run-progress-text").textContent = `${num(x.done) ?? "–"} of ${num(x.total) ?? "–"} items done · ${num(x.charged) ?? 0} charged`;
    let spent = num(x.spent) || 0;
    let reserved = 0;
    if (live && num(live.spent_cents) !== null) {
      spent = Math.max(spent, live.spent_cents);
      reserved = running ? num(live.pending_cents) || 0 : 0;
    }
    setBar($("#run-spend"), spent, reserved, x.cap);
    $("#run-spend-text").textContent = spendText(spent, reserved, x.cap);
    const keys = (live && live.keys) || [];
    const label = x.label || (live && live.label);
    const stopped = x.stopped ? outcomeWords(x.stopped) : x.status === "terminated" ? "Terminated (stopped by an operator)" : "–";
    renderIfChanged($("#run-facts"), [label, x.created, x.updated, x.charged, stopped, x.skipped, keys.map((k) => [k.key_id, k.status]), x.approval], () => $("#run-facts").replaceChildren(
      fact("Key label", label || "–"),
      fact("Run keys", keys.length ? keys.map((k, i) => [i ? ", " : "", h("a", { href: `#/keys/${encodeURIComponent(k.key_id)}` }, k.key_id), ` (${k.status})`]) : "–"),
      fact("Started", when(x.created)),
      fact("Last update", `${when(x.updated)}${x.updated ? ` (${relative(x.updated)})` : ""}`),
      fact("Charged", String(num(x.charged) ?? 0)),
      fact("Stopped because", stopped),
      x.approval ? fact("Approval", approvalWords(x.approval)) : null,
      fact("Skipped by reason", skippedList(x.skipped)),
    ));
    renderIfChanged($("#run-result"), state.results[x.id] || null, () => $("#run-result").replaceChildren(resultBox(state.results[x.id]) || ""));
    renderItems(x.items);
    $("#items-empty").textContent = running
      ? "Per-item outcomes appear when the run finishes."
      : x.status === "terminated"
        ? "The run was stopped before any charge was attempted."
        : x.omitted ? `Not listed: ${x.omitted}.` : "No items.";
  }

  function renderItems(items) {
    const s = state.items;
    const outcomeOf = (it) => String(it.outcome || it.status || it.result || "unknown").toLowerCase();
    const counts = {};
    for (const it of items) counts[outcomeOf(it)] = (counts[outcomeOf(it)] || 0) + 1;
    const filters = ["all", ...Object.keys(counts).sort()];
    if (!filters.includes(s.filter)) s.filter = "all";
    const table = $("#items-table");
    const sig = JSON.stringify([items, s.filter, s.page]);
    if (table.dataset.sig === sig) return;
    table.dataset.sig = sig;
    $("#items-filter").replaceChildren(...filters.map((f) => h("button", {
      class: "btn", type: "button", "aria-pressed": String(f === s.filter),
      onclick: () => { s.filter = f; s.page = 0; refresh(); },
    }, f === "all" ? `All (${items.length})` : `${outcomeWords(f)} (${counts[f]})`)));
    const shown = items.filter((it) => s.filter === "all" || outcomeOf(it) === s.filter);
    const pages = Math.max(1, Math.ceil(shown.length / ITEMS_PAGE));
    s.page = Math.min(s.page, pages - 1);
    const slice = shown.slice(s.page * ITEMS_PAGE, (s.page + 1) * ITEMS_PAGE);
    $("#items-table tbody").replaceChildren(...slice.map((it) => {
      const o = outcomeOf(it);
      const good = o === "succeeded" || o === "charged";
      const why = o === "skipped" && it.reason ? `because: ${outcomeWords(it.reason)}` : [it.code, it.reason].filter(Boolean).join(": ");
      return h("tr", { "data-outcome": o },
        h("td", { "data-label": "Item" }, h("span", { class: "mono" }, it.customer_id || it.item_id || it.id || "–"), num(it.item_index) !== null ? h("span", { class: "sub" }, `#${it.item_index}`) : null),
        h("td", { "data-label": "Outcome" }, h("span", { class: `badge ${good ? "succeeded" : o}` }, outcomeWords(o)), it.replayed ? h("span", { class: "sub" }, "replayed, no new charge") : null),
        h("td", { "data-label": "Amount" }, num(it.amount_cents ?? it.amount) !== null ? money(it.amount_cents ?? it.amount, it.currency) : "–"),
        h("td", { "data-label": "Stripe object / reason" }, it.object_id ? h("span", { class: "mono" }, it.object_id) : null, why ? h("span", { class: "sub" }, why) : null),
      );
    }));
    $("#items-empty").hidden = items.length > 0;
    $("#items-pager").replaceChildren(
      h("span", {}, `Page ${s.page + 1} of ${pages}`),
      h("button", { class: "btn", type: "button", disabled: s.page === 0, onclick: () => { s.page -= 1; refresh(); } }, "← Previous"),
      h("button", { class: "btn", type: "button", disabled: s.page >= pages - 1, onclick: () => { s.page += 1; refresh(); } }, "Next →"),
    );
  }

  // ---------------------------------------------------------------- alerts + approvals
  const ALERTS = {
    spend_threshold: "Spend threshold reached",
    run_stopped_by_cap: "Run stopped by its cap",
    key_revoked: "Key revoked",
    approval_requested: "Approval requested",
  };

  async function loadKeyAlerts(keyId) {
    const page = await api("GET", "/alerts", { key_id: keyId });
    const rows = page.data || [];
    const body = $("#key-alerts-table tbody");
    renderIfChanged(body, rows, () => body.replaceChildren(...rows.map((a) => h("tr", { "data-alert": a.type, "data-threshold": a.threshold_percent ?? "" },
      h("td", { "data-label": "Time" }, when(a.created_at), h("span", { class: "sub" }, relative(a.created_at))),
      h("td", { "data-label": "Alert" }, ALERTS[a.type] || words(a.type), a.threshold_percent ? h("span", { class: "badge cap_exceeded" }, `${a.threshold_percent} %`) : null),
      h("td", { "data-label": "What happened" }, a.message || ""),
    ))));
    $("#key-alerts-empty").hidden = rows.length > 0;
  }

  function approvalWords(a) {
    if (!a.decision) return `waiting for a decision until ${when(a.expires_at)} (${relative(a.expires_at)})`;
    const by = a.by ? ` by ${a.by}` : "";
    return `${words(a.decision)}${by}${a.at ? ` at ${when(a.at)}` : ""}${a.reason ? ` (${a.reason})` : ""}`;
  }

  function runDecisionButtons(runId, what) {
    const decide = (verb, ok, cls) => h("button", {
      class: `btn ${cls}`, type: "button", "data-decide": verb,
      onclick: () => confirmThen({
        title: `${ok} this billing run?`,
        text: verb === "approve"
          ? `${what} gets its vault key and starts charging its customers now.`
          : `${what} ends without charging anyone; no key is ever issued.`,
        ok, who: true, id: runId,
        run: (d) => api("POST", `/billing/runs/${encodeURIComponent(runId)}/${verb}`, null, d),
        done: (r) => `${ok}d: ${approvalWords(r.approval || {})}`,
      }),
    }, ok);
    return [decide("approve", "Approve", "btn-primary"), decide("reject", "Reject", "btn-danger")];
  }

  function chargeDecisionButtons(a) {
    const decide = (verb, ok, cls) => h("button", {
      class: `btn ${cls}`, type: "button", "data-decide": verb,
      onclick: () => confirmThen({
        title: `${ok} this charge?`,
        text: verb === "approve"
          ? `${money(a.amount_cents)} to ${a.customer || "the customer"} on key "${a.label}": the agent's next identical request is charged once, within the key's cap.`
          : `${money(a.amount_cents)} to ${a.customer || "the customer"} on key "${a.label}" is never forwarded to Stripe.`,
        ok, who: true, id: a.id,
        run: (d) => api("POST", `/approvals/${encodeURIComponent(a.id)}/${verb}`, null, d),
        done: (r) => `${ok}d: ${money(r.amount_cents)} ${r.state} by ${r.decided_by}`,
      }),
    }, ok);
    return [decide("approve", "Approve", "btn-primary"), decide("reject", "Reject", "btn-danger")];
  }

  // Every pending approval, a page of 100 at a time (Stripe-style: has_more, starting_after).
  async function pendingApprovals() {
    const all = [];
    for (let after = null, page = 0; page < 50; page++) {
      const got = await api("GET", "/approvals", { state: "pending", limit: 100, starting_after: after });
      all.push(...(got.data || []));
      if (!got.has_more || !(got.data || []).length) break;
      after = got.data[got.data.length - 1].id;
    }
    return { data: all };
  }

  async function loadApprovals() {
    const [charges, runs] = await Promise.all([pendingApprovals(), api("GET", "/billing/runs", { limit: 100 })]);
    const waiting = (runs.data || []).map(runInfo).filter((x) => x.awaiting);
    const runBody = $("#run-approvals-table tbody");
    renderIfChanged(runBody, waiting.map((x) => [x.id, x.raw.progress]), () => runBody.replaceChildren(...waiting.map((x) => {
      const expires = ((x.raw.progress || {}).approval || {}).expires_at;
      return h("tr", { "data-run-id": x.id },
        h("td", { "data-label": "Run" }, h("a", { href: `#/runs/${encodeURIComponent(x.id)}` }, x.id)),
        h("td", { "data-label": "Customers" }, `${num(x.total) ?? "–"}`),
        h("td", { "data-label": "Waits until" }, expires ? `${when(expires)} (${relative(expires)})` : "–"),
        h("td", { "data-label": "Decide", class: "actions" }, ...runDecisionButtons(x.id, `Run ${x.id}`)),
      );
    })));
    $("#run-approvals-empty").hidden = waiting.length > 0;
    const rows = charges.data || [];
    const body = $("#approvals-table tbody");
    renderIfChanged(body, rows, () => body.replaceChildren(...rows.map((a) => h("tr", { "data-approval-id": a.id },
      h("td", { "data-label": "Charge" }, money(a.amount_cents), h("span", { class: "sub mono" }, `${a.method} ${a.path}${a.customer ? ` · ${a.customer}` : ""}`), h("span", { class: "sub mono" }, a.id)),
      h("td", { "data-label": "Key" }, h("a", { href: `#/keys/${encodeURIComponent(a.key_id)}` }, a.label || a.key_id)),
      h("td", { "data-label": "Waits until" }, `${when(a.expires_at)} (${relative(a.expires_at)})`),
      h("td", { "data-label": "Decide", class: "actions" }, ...chargeDecisionButtons(a)),
    ))));
    $("#approvals-empty").hidden = rows.length > 0;
    const count = rows.length + waiting.length;
    $("#approvals-count").textContent = String(count);
    $("#approvals-count").hidden = count === 0;
  }

  // ---------------------------------------------------------------- confirm + act
  function confirmThen({ title, text, ok, run, id, done, who = false }) {
    const dlg = $("#confirm");
    $("#confirm-title").textContent = title;
    $("#confirm-text").textContent = text;
    $("#confirm-ok").textContent = ok;
    $("#confirm-who").hidden = !who;
    $("#confirm-approver").required = who;
    $("#confirm-approver").value = sessionStorage.getItem(APPROVER_STORE) || "";
    $("#confirm-reason").value = "";
    dlg.returnValue = "";
    dlg.onclose = async () => {
      if (dlg.returnValue !== "ok") return;
      const decider = { approver: $("#confirm-approver").value.trim(), reason: $("#confirm-reason").value.trim() || undefined };
      if (who && decider.approver) sessionStorage.setItem(APPROVER_STORE, decider.approver);
      try {
        const res = await run(decider);
        state.results[id] = { ok: true, title: done(res || {}), detail: JSON.stringify(res, null, 2) };
        toast(done(res || {}));
      } catch (e) {
        if (keyRefused(e)) return signOut(explain(e));
        state.results[id] = { ok: false, title: "The app refused", detail: explain(e) };
      }
      refresh();
    };
    dlg.showModal();
  }

  // ---------------------------------------------------------------- refresh loop
  let pending = null;
  let again = false;
  /** Re-render the current view from the API; coalesces overlapping calls. */
  function refresh() {
    if (pending) {
      again = true;
      return pending;
    }
    pending = (async () => {
      const route = state.route;
      try {
        if (route.view === "keys") await loadKeys();
        else if (route.view === "key") await loadKey(route.id);
        else if (route.view === "runs") await loadRuns();
        else if (route.view === "approvals") await loadApprovals();
        else if (route.view === "run") {
          await loadRun(route.id);
          if (route.anchor === "items" && !route.scrolled) {
            route.scrolled = true;
            $("#run-items-card").scrollIntoView();
          }
        }
        pageError("");
        state.lastOk = new Date();
        setLive();
      } catch (e) {
        if (keyRefused(e)) {
          signOut(explain(e));
        } else {
          pageError(explain(e));
          setLive(true);
        }
      } finally {
        pending = null;
        if (again) {
          again = false;
          refresh();
        }
      }
    })();
    return pending;
  }
  function setLive(stale = false) {
    const el = $("#live");
    const paused = document.hidden;
    el.className = `live${paused ? " paused" : ""}${stale ? " stale" : ""}`;
    el.textContent = paused ? "Paused" : `Live · updated ${state.lastOk ? state.lastOk.toLocaleTimeString() : "–"}`;
  }

  function onRoute() {
    if (!functionKey()) return signOut("");
    const route = parseRoute();
    const changed = route.view !== state.route.view || route.id !== state.route.id || route.anchor !== state.route.anchor;
    state.route = route;
    if (changed) {
      pageError("");
      state.items = { filter: "all", page: 0 };
      $("#run-card").dataset.runId = "";
      for (const el of document.querySelectorAll("[data-sig]")) delete el.dataset.sig;
    }
    showOnly(route.view);
    refresh();
  }

  // ---------------------------------------------------------------- sign-in
  async function signIn(ev) {
    ev.preventDefault();
    const input = $("#function-key");
    const key = input.value.trim();
    const err = $("#signin-error");
    if (!key) return;
    sessionStorage.setItem(KEY_STORE, key);
    try {
      await api("GET", "/vault/keys", { limit: 1 }); // proves the key before showing anything
    } catch (e) {
      sessionStorage.removeItem(KEY_STORE);
      err.textContent = keyRefused(e)
        ? "That function key was refused (HTTP " + e.status + "). Check you pasted the app's function key or host key, then try again."
        : `Could not check the key: ${explain(e)}`;
      err.hidden = false;
      input.select();
      return;
    }
    input.value = "";
    err.hidden = true;
    state.route = { view: null, id: null };
    onRoute();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("#signin-form").addEventListener("submit", signIn);
    $("#signout").addEventListener("click", () => signOut("Key forgotten. Paste a function key to continue."));
    $("#keys-filter").addEventListener("submit", (ev) => {
      ev.preventDefault();
      state.keys.label = $("#keys-label").value.trim();
      state.keys.pager = newPager();
      refresh();
    });
    for (const b of document.querySelectorAll("#audit-filter [data-filter]")) {
      b.addEventListener("click", () => {
        state.audit.filter = b.dataset.filter;
        refresh();
      });
    }
    window.addEventListener("hashchange", onRoute);
    document.addEventListener("visibilitychange", () => {
      setLive();
      if (!document.hidden && functionKey()) refresh();
    });
    setInterval(() => {
      if (!document.hidden && functionKey() && !$("#confirm").open) refresh();
    }, POLL_MS);
    onRoute();
  });
})();
