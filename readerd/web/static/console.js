// The operator console: polls /api/console/state. The login gives an HttpOnly cookie of a session that ends
// after 30 minutes unused or 8 hours (web.console_idle, web.console_max_age), or at logout.
// Charts are inline SVG drawn here: no charting library, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
}

function table(id, header, rows) {
  const t = $(id);
  t.replaceChildren();
  const h = document.createElement("tr");
  for (const name of header) { const th = document.createElement("th"); th.textContent = name; h.appendChild(th); }
  t.appendChild(h);
  for (const r of rows) {
    const tr = document.createElement("tr");
    for (const c of r) Array.isArray(c) ? cell(tr, c[0], c[1]) : cell(tr, c);
    t.appendChild(tr);
  }
}

function bars(id, values, labels) {
  const w = 600, h = 160, pad = 20;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("width", w); svg.setAttribute("height", h); svg.setAttribute("role", "img");
  const max = Math.max(1, ...values);
  const bw = values.length ? (w - pad) / values.length : 0;
  values.forEach((v, i) => {
    const r = document.createElementNS(SVG, "rect");
    const bh = (h - 2 * pad) * v / max;
    r.setAttribute("x", pad + i * bw + 1); r.setAttribute("y", h - pad - bh);
    r.setAttribute("width", Math.max(1, bw - 2)); r.setAttribute("height", bh);
    r.setAttribute("fill", "#1f5fbf");
    const title = document.createElementNS(SVG, "title");
    title.textContent = (labels ? labels[i] + ": " : "") + v;
    r.appendChild(title);
    svg.appendChild(r);
  });
  const label = document.createElementNS(SVG, "text");
  label.setAttribute("x", 2); label.setAttribute("y", 14); label.setAttribute("font-size", "12");
  label.textContent = "max " + max;
  svg.appendChild(label);
  $(id).replaceChildren(svg);
}

function render(s) {
  const st = s.status || {};
  $("kiosk").textContent = st.kiosk || "";
  const healthy = s.status && st.healthy !== false && s.bus.connected;
  $("health").textContent = s.status
    ? `${healthy ? "healthy" : "UNHEALTHY"} · bus ${s.bus.connected ? "connected" : "silent"} · last seq ${st.last_seq} · subscribers ${st.subscribers ?? ""} · uptime ${Math.round(st.uptime_s || 0)} s`
    : `daemon unreachable: ${(s.status_error || {}).message || ""}`;
  $("health").className = healthy ? "ok" : "bad";
  $("fleet-section").classList.toggle("hidden", !s.fleet.length);
  table("fleet", ["kiosk", "state", "readers", "cards on readers", "quarantined plugins", "last seq", "uptime s"],
    s.fleet.map((k) => [
      k.reachable ? `${k.name} (${k.kiosk})` : k.name,
      !k.reachable ? [k.error || "unreachable", "bad"] : k.healthy ? ["healthy", "ok"] : ["UNHEALTHY", "bad"],
      k.readers ?? "", k.cards ?? "", k.quarantined ? [k.quarantined.join(", "), k.quarantined.length ? "bad" : ""] : "",
      k.last_seq ?? "", k.uptime_s !== undefined ? Math.round(k.uptime_s) : ""]));
  table("readers", ["reader", "backend", "card", "state", "since"], (s.readers || []).map((r) => [
    r.name, r.backend, r.card ?? "-", [r.state, r.state === "ok" ? "ok" : "bad"], r.since ?? ""]));
  const p = s.plugins || { plugins: [], quarantined: [] };
  table("plugins", ["plugin", "version", "state"], (p.plugins || []).map((x) => [
    x.name, x.version, (p.quarantined || []).includes(x.name) ? ["quarantined", "bad"] : ["ok", "ok"]]));
  table("plugin-errors", ["time", "plugin", "hook", "error", "quarantined"], s.plugin_errors.map((e) => [
    e.ts, e.data.plugin, e.data.hook, e.data.error, e.data.quarantined ? ["yes", "bad"] : "no"]));
  bars("taps-chart", s.taps_per_hour.map((x) => x.taps), s.taps_per_hour.map((x) => x.hour));
  bars("latency-chart", s.latency_ms);
  table("recent", ["seq", "time", "type", "reader", "data"], s.recent.map((e) => [
    e.seq, e.ts, e.type, e.reader ?? "-", JSON.stringify(e.data)]));
}

async function poll() {
  const r = await fetch("/api/console/state", { credentials: "same-origin" });
  if (r.status === 401) {
    const reply = await r.json().catch(() => ({}));
    const expired = reply.error && reply.error.code === "session_expired";
    if (expired) $("login-error").textContent = "session ended / セッションが終了しました";
    document.body.dataset.state = "login"; $("main").classList.add("hidden"); $("login").classList.remove("hidden");
    return false;
  }
  document.body.dataset.state = "console";
  $("login").classList.add("hidden");
  $("main").classList.remove("hidden");
  render(await r.json());
  return true;
}

$("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  const r = await fetch("/api/console/login", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token: $("token").value }), credentials: "same-origin",
  });
  $("token").value = "";
  if (r.ok) { $("login-error").textContent = ""; poll(); return; }
  document.body.dataset.state = "refused";
  if (r.status === 429) {
    const wait = r.headers.get("Retry-After") || "?";
    $("login-error").textContent = `too many attempts: wait ${wait} s / 試行が多すぎます（${wait} 秒後に再試行）`;
  } else {
    $("login-error").textContent = "wrong token / トークンが違います";
  }
});

$("logout").addEventListener("click", async () => {
  await fetch("/api/console/logout", { method: "POST", credentials: "same-origin" });
  poll();
});

async function loop() {
  try { await poll(); } catch (_e) { /* the web app restarts: try again */ }
  setTimeout(loop, 1000);
}
loop();
