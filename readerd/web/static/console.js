// The operator console: polls /api/console/state. The login gives an HttpOnly cookie of a session that ends
// after 30 minutes unused or 8 hours (web.console_idle, web.console_max_age), or at logout.
// Charts are inline SVG drawn here, with axes and units: no charting library, no CDN. Events come as lines
// in words from the app (readerd/web/app.py, console_line), times in JST: no raw JSON on this page.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

function cell(row, text, cls, title) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (cls) td.className = cls;
  if (title) td.title = title;
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
    for (const c of r) Array.isArray(c) ? cell(tr, c[0], c[1], c[2]) : cell(tr, c);
    t.appendChild(tr);
  }
}

// A wire timestamp (UTC) as the ward's clock reads it: "12-07 19:32:05" in JST (+09:00, no DST).
function jst(ts) {
  const t = Date.parse(ts);
  if (!ts || Number.isNaN(t)) return ts ?? "";
  const d = new Date(t + 9 * 3600 * 1000);
  const p = (n) => String(n).padStart(2, "0");
  return `${p(d.getUTCMonth() + 1)}-${p(d.getUTCDate())} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())}`;
}

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

// A bar chart with both axes: y ticks at 0, half and the top (whole numbers for counts), x labels under
// the bars (at most about 12), and a title on each axis with its unit.
function bars(id, values, { labels = [], xTitle = "", yTitle = "", integer = true } = {}) {
  const w = 640, h = 220, left = 56, right = 12, top = 14, bottom = 52;
  const plotW = w - left - right, plotH = h - top - bottom;
  const svg = svgEl("svg", { width: w, height: h, role: "img", "aria-label": `${yTitle} / ${xTitle}` });
  const raw = Math.max(0, ...values);
  const max = integer ? Math.max(2, Math.ceil(raw / 2) * 2) : (raw > 0 ? raw * 1.1 : 1);
  const fmt = (v) => integer ? String(Math.round(v)) : String(Math.round(v * 10) / 10);
  for (const frac of [0, 0.5, 1]) {
    const y = top + plotH * (1 - frac);
    svg.appendChild(svgEl("line", { x1: left - 4, x2: w - right, y1: y, y2: y, class: frac ? "grid" : "axis" }));
    svg.appendChild(svgEl("text", { x: left - 7, y: y + 4, "text-anchor": "end", class: "tick" }, fmt(max * frac)));
  }
  svg.appendChild(svgEl("line", { x1: left, x2: left, y1: top, y2: top + plotH, class: "axis" }));
  const bw = values.length ? plotW / values.length : 0;
  const every = Math.max(1, Math.ceil(values.length / 12));
  values.forEach((v, i) => {
    const bh = plotH * v / max;
    const barW = Math.max(1, Math.min(bw - 2, 48));
    const r = svgEl("rect", { x: left + i * bw + (bw - barW) / 2, y: top + plotH - bh, width: barW, height: bh, class: "bar" });
    r.appendChild(svgEl("title", {}, (labels[i] !== undefined ? labels[i] + ": " : "") + fmt(v)));
    svg.appendChild(r);
    if (labels[i] !== undefined && i % every === 0) {
      svg.appendChild(svgEl("text", { x: left + i * bw + bw / 2, y: top + plotH + 16, "text-anchor": "middle", class: "tick" }, labels[i]));
    }
  });
  if (!values.length) {
    svg.appendChild(svgEl("text", { x: left + plotW / 2, y: top + plotH / 2, "text-anchor": "middle", class: "tick" }, "データなし / no data yet"));
  }
  svg.appendChild(svgEl("text", { x: left + plotW / 2, y: h - 8, "text-anchor": "middle", class: "axis-title x-title" }, xTitle));
  svg.appendChild(svgEl("text", { x: 14, y: top + plotH / 2, "text-anchor": "middle", class: "axis-title y-title",
    transform: `rotate(-90 14 ${top + plotH / 2})` }, yTitle));
  $(id).replaceChildren(svg);
}

function render(s) {
  const st = s.status || {};
  $("kiosk").textContent = st.kiosk || "";
  if (s.time_zone) $("tz").textContent = `${s.time_zone.label} / times are JST (UTC${s.time_zone.offset})`;
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
  table("readers", ["reader", "backend", "card", "state", "since (JST)"], (s.readers || []).map((r) => [
    r.name, r.backend, r.card ?? "-", [r.state, r.state === "ok" ? "ok" : "bad"], r.since ? jst(r.since) : ""]));
  const p = s.plugins || { plugins: [], quarantined: [] };
  table("plugins", ["plugin", "version", "source", "state"], (p.plugins || []).map((x) => [
    x.name, x.version || "-", x.source === "builtin" ? "built-in" : x.source,
    (p.quarantined || []).includes(x.name) ? ["quarantined", "bad"] : ["ok", "ok"]]));
  table("plugin-errors", ["time (JST)", "plugin", "hook", "error", "message", "quarantined"], s.plugin_errors.map((e) => [
    e.at, e.plugin, e.hook, e.error, e.message, e.quarantined ? ["yes", "bad"] : "no"]));
  const taps = s.taps_chart || [];
  bars("taps-chart", taps.map((x) => x.taps), { labels: taps.map((x) => x.label),
    xTitle: "時刻 (JST) / hour (JST)", yTitle: "タッチ数 / taps" });
  bars("latency-chart", s.latency_ms, { labels: s.latency_ms.map((_v, i) => String(i + 1)),
    xTitle: "タッチ（古い順） / taps, oldest first", yTitle: "ミリ秒 / ms", integer: false });
  table("recent", ["時刻", "読み取り機", "内容", "種別"], (s.lines || []).map((l) => [
    [l.time, "time", l.at], l.reader || "-", [l.text, `line ${l.level}`], [l.type, "code"]]));
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
