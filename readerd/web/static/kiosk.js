// The kiosk screen: events of one reader over Server-Sent Events, the PIN keypad over POST.
// Plain script, no framework and no CDN: kiosks may be offline. Nothing personal is kept here.
"use strict";

// The per-boot secret comes from the kiosk launcher in the URL's fragment, which no server ever sees (no
// access log, no Referer). It leaves the address bar at once and stays in this tab's sessionStorage, so a
// reload or a restart of readerd web opens a new session without the launcher (docs/web.md).
const SECRET_KEY = "readerd-kiosk-secret";
{
  const fromLauncher = new URLSearchParams(location.hash.slice(1)).get("secret");
  if (fromLauncher) {
    sessionStorage.setItem(SECRET_KEY, fromLauncher);
    history.replaceState(null, "", location.pathname + location.search);
  }
}

const params = new URLSearchParams(location.search);
const READER = params.get("reader") || "";
const LANG = params.get("lang") === "en" ? "en" : "ja";
const HOLD_MS = Number(params.get("hold") || 10) * 1000;
document.documentElement.lang = LANG;

const T = {
  ja: {
    idle: "カードをかざしてください",
    idleDetail: "マイナンバーカードなどのカードが使えます",
    reading: "読み取り中です",
    readingDetail: "カードを動かさないでください",
    identified: "カードを読み取りました",
    removed: "カードを置いたままにしてください",
    malformed: "カードを読み取れませんでした",
    malformedDetail: "もう一度かざしてください",
    timeout: "カードが応答しません",
    timeoutDetail: "カードを一度離して、もう一度かざしてください",
    transport: "読み取り機の調子が悪いようです",
    transportDetail: "係員をお呼びください",
    auth_required: "このカードは暗証番号が必要です",
    auth_requiredDetail: "係員をお呼びください",
    otherError: "カードを読み取れませんでした",
    otherErrorDetail: "係員をお呼びください",
    eventsLost: "もう一度タッチしてください",
    eventsLostDetail: "読み取った結果をお伝えできませんでした",
    pinStart: "暗証番号で本人確認",
    pinCancel: "やめる",
    pinTitle: "暗証番号（数字4桁）を入力してください",
    triesLeft: (n) => `残り ${n} 回入力できます`,
    lastWarn: "あと1回間違えるとロックされ、窓口での手続きが必要になります",
    clear: "訂正", ok: "確認", okLast: "最後の1回を使う",
    wrongPin: (n) => `暗証番号が違います（残り ${n} 回）`,
    pinBlocked: "暗証番号がロックされています",
    pinBlockedDetail: "市区町村の窓口で手続きをしてください",
    authOk: "本人確認ができました",
    authFailed: "本人確認ができませんでした",
    authFailedDetail: "係員をお呼びください",
    pinFormat: "数字4桁を入力してください",
    pinAgain: "もう一度暗証番号を入力してください",
    noReader: (r) => `読み取り機「${r}」が見つかりません`,
    noReaderGiven: "読み取り機が指定されていません",
    noReaderDetail: (names) => names.length ? `係員をお呼びください（接続中: ${names.join("、")}）` : "係員をお呼びください（接続中の読み取り機はありません）",
    disconnected: "ただいま準備中です",
    refused: "この画面は使えません",
    refusedDetail: "係員をお呼びください",
  },
  en: {
    idle: "Please touch your card",
    idleDetail: "My Number Card and other cards accepted",
    reading: "Reading", readingDetail: "Please keep the card still",
    identified: "Card read",
    removed: "Please leave the card on the reader",
    malformed: "The card could not be read", malformedDetail: "Please touch it again",
    timeout: "The card does not answer", timeoutDetail: "Take the card away and touch again",
    transport: "The reader has a problem", transportDetail: "Please call staff",
    auth_required: "This card needs a PIN", auth_requiredDetail: "Please call staff",
    otherError: "The card could not be read", otherErrorDetail: "Please call staff",
    eventsLost: "Please touch your card again", eventsLostDetail: "The result of the last read was lost",
    pinStart: "Confirm with PIN", pinCancel: "Cancel",
    pinTitle: "Enter your 4-digit PIN",
    triesLeft: (n) => `${n} tries left`,
    lastWarn: "One more wrong PIN locks the card; unlocking needs a visit to the ward office",
    clear: "Clear", ok: "OK", okLast: "Use the last try",
    wrongPin: (n) => `Wrong PIN (${n} tries left)`,
    pinBlocked: "The PIN is locked", pinBlockedDetail: "Please visit the ward office",
    authOk: "Identity confirmed",
    authFailed: "Identity not confirmed", authFailedDetail: "Please call staff",
    pinFormat: "Enter 4 digits",
    pinAgain: "Please enter your PIN again",
    noReader: (r) => `No reader "${r}" is connected`,
    noReaderGiven: "No reader is named for this screen",
    noReaderDetail: (names) => names.length ? `Please call staff (connected: ${names.join(", ")})` : "Please call staff (no reader is connected)",
    disconnected: "Please wait",
    refused: "This screen is not available",
    refusedDetail: "Please call staff",
  },
}[LANG];

const $ = (id) => document.getElementById(id);
let idleTimer = null;
let jpkiOnReader = false;
let pin = { active: false, authId: null, digits: "", lastTry: false, confirmation: null, busy: false };

function show(state, title, detail = "", extra = "", cls = "") {
  document.body.dataset.state = state;
  delete document.body.dataset.level;
  $("others").replaceChildren();
  delete $("title").dataset.plugin;
  $("title").textContent = title;
  $("title").className = cls;
  $("detail").textContent = detail;
  $("extra").textContent = extra;
  $("pin").classList.toggle("hidden", state !== "pin");
  $("pin-cancel").classList.toggle("hidden", state !== "pin");
  $("pin-start").classList.toggle("hidden", state === "pin" || !jpkiOnReader);
  clearTimeout(idleTimer);
  if (!["idle", "pin", "reading", "refused", "noreader"].includes(state)) {
    idleTimer = setTimeout(idle, HOLD_MS);
  }
}

function idle() { show("idle", T.idle, T.idleDetail); }

function onCard(ev) {
  if (readerMissing) return; // the page says it stands beside no reader of the daemon's
  const d = ev.data;
  switch (ev.type) {
    case "card.presented":
      if (!pin.active) show("reading", T.reading, T.readingDetail);
      break;
    case "card.identified":
      onTap(ev);
      jpkiOnReader = d.kind === "jpki";
      if (!pin.active) show("identified", T.identified);
      break;
    case "card.removed":
      jpkiOnReader = false;
      if (pin.active) { endPin(); idle(); } else { $("pin-start").classList.add("hidden"); }
      break;
    case "card.read_aborted": {
      const r = ["removed", "malformed", "timeout", "transport", "auth_required"].includes(d.reason) ? d.reason : "otherError";
      show("error", T[r], T[r + "Detail"] || "", "", "warn");
      break;
    }
    case "card.authenticated":
      onTap(ev);
      endPin();
      show("authenticated", T.authOk, "", "", "ok");
      break;
    case "card.auth_failed":
      break; // the keypad shows the reply of its own auth.pin
    case "card.events_lost":
      // the daemon lost this reader's card events (its bus was wedged): whatever the screen shows of
      // the last tap may be incomplete, so the citizen is asked to touch again
      if (tap) { clearTimeout(tap.timer); tap.handled = true; }
      endPin();
      show("error", T.eventsLost, T.eventsLostDetail, "", "bad");
      break;
  }
}

// --- what the plugins said about a tap ---------------------------------------------------------------------
// No plugin's words live here: each result carries its own (data.screen = {level, ja, en}, rendered by the
// plugin host from the plugin's ResultSpec). A tap's results are shown together once the host says it is
// done with the tap (plugin.handled, cause = the tap's id), the one that matters most first.
const LEVELS = { refusal: 0, success: 1, info: 2 };
const LEVEL_CLASS = { refusal: "bad", success: "ok", info: "info" };
// Only for a plugin host that never says plugin.handled (an older `readerd plugins`): then the results
// that arrived this long after the tap (longer than the default hook_timeout) are shown as they are; a
// plugin.handled that comes after all shows the tap's answer again, complete.
const SETTLE_MS = Number(params.get("settle") || 6) * 1000;
let tap = null; // {id, handled, timer} of the last card.identified / card.authenticated on this reader
let said = new Map(); // result id -> event, since that tap

function onTap(ev) {
  if (tap) clearTimeout(tap.timer);
  said = new Map();
  tap = { id: ev.id, handled: false, timer: setTimeout(() => compose(null), SETTLE_MS) };
}

function onPlugin(ev) {
  if (readerMissing) return;
  if (ev.type === "plugin.handled") {
    if (tap && ev.cause === tap.id) compose(ev.data.results || []);
    return;
  }
  if (!ev.data || !ev.data.screen) return; // a result without words for a screen
  if (!ev.cause) { showResults([ev]); return; } // a command's or a timer's: no tap to wait for
  said.set(ev.id, ev);
}

// `listed`: plugin.handled's results (ids in publication order), or null at the fallback timeout
function compose(listed) {
  if (!tap || tap.handled) return;
  tap.handled = listed !== null;
  clearTimeout(tap.timer);
  const shown = listed === null ? [...said.values()] : listed.map((r) => said.get(r.id)).filter(Boolean);
  if (shown.length) showResults(shown);
}

// Refusal before success before info; within a level the order of publication (the plugin host's load
// order, then results that other plugins' results led to), which Array.prototype.sort keeps (stable).
function showResults(results) {
  if (pin.active) return; // results of a tap wait until the citizen has finished typing
  const ordered = [...results].sort((a, b) => rank(a) - rank(b));
  const [first, ...rest] = ordered;
  // how many result screens this page has shown: bench/web_screen.py times tap -> screen by it
  document.body.dataset.results = String(Number(document.body.dataset.results || 0) + 1);
  show("result", first.data.screen[LANG], "", "", LEVEL_CLASS[first.data.screen.level] || "");
  document.body.dataset.level = first.data.screen.level;
  const list = $("others");
  for (const r of rest) {
    const li = document.createElement("li");
    li.textContent = r.data.screen[LANG];
    li.className = LEVEL_CLASS[r.data.screen.level] || "";
    li.dataset.plugin = r.type.split(".")[1];
    list.appendChild(li);
  }
  $("title").dataset.plugin = first.type.split(".")[1];
}

function rank(ev) { return LEVELS[ev.data.screen.level] ?? 3; }

// --- the reader this screen stands beside ----------------------------------------------------------------
let readers = null; // the daemon's reader names (the stream's hello, then reader.added / reader.removed)
let readerMissing = false;
function checkReader(names) {
  if (!Array.isArray(names)) return; // the daemon did not answer: nothing to say yet
  readerMissing = !READER || !names.includes(READER);
  if (readerMissing) {
    show("noreader", READER ? T.noReader(READER) : T.noReaderGiven, T.noReaderDetail(names), "", "bad");
  } else if (document.body.dataset.state === "noreader") {
    idle();
  }
}

// --- the session: the secret once, then an HttpOnly cookie ----------------------------------------------
function post(path, body) {
  return fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    credentials: "same-origin",
  });
}

// "ok", "refused" (no secret, or not this boot's) or "down" (readerd web does not answer)
async function openSession() {
  try {
    const r = await post("/api/kiosk/session", { secret: sessionStorage.getItem(SECRET_KEY) || "" });
    return r.ok ? "ok" : r.status === 403 ? "refused" : "down";
  } catch (_e) {
    return "down";
  }
}

// --- PIN ---------------------------------------------------------------------------------------------
async function command(cmd, args) {
  let r = await post("/api/kiosk/" + cmd, args);
  // no session (readerd web restarted): open one and ask again; auth.begin carries no PIN
  if (r.status === 403 && cmd === "auth.begin" && await openSession() === "ok") r = await post("/api/kiosk/" + cmd, args);
  return r.json();
}

async function beginPin(message = "") {
  pin = { active: true, authId: null, digits: "", lastTry: false, confirmation: null, busy: true };
  const reply = await command("auth.begin", { reader: READER });
  pin.busy = false;
  if (!reply.ok) return pinError(reply.error);
  pin.authId = reply.result.auth_id;
  pin.lastTry = reply.result.last_try;
  // the app's one-time confirmation for this auth_id: sent only by the confirm key under the warning
  pin.confirmation = reply.result.last_try_confirmation || null;
  show("pin", message || T.pinTitle, "", "", message ? "bad" : "");
  $("pin-tries").textContent = T.triesLeft(reply.result.tries_left);
  $("pin-lastwarn").textContent = T.lastWarn;
  $("pin-lastwarn").classList.toggle("hidden", !pin.lastTry);
  $("key-ok").textContent = pin.lastTry ? T.okLast : T.ok;
  $("key-ok").classList.toggle("long", pin.lastTry);
  drawDots();
}

function pinError(error) {
  const code = error && error.code;
  if (code === "wrong_pin") return beginPin(T.wrongPin(error.details ? error.details.tries_left : "?"));
  endPin();
  if (code === "pin_blocked") return show("error", T.pinBlocked, T.pinBlockedDetail, "", "bad");
  if (code === "bad_pin_format") return beginPin(T.pinFormat);
  // the try may have been counted, or the session ran out: read the tries again, never resend the PIN
  const again = ["pin_result_unknown", "auth_session_invalid", "kiosk_secret_required", "last_try_confirmation_required"];
  if (again.includes(code)) return beginPin(T.pinAgain);
  show("error", T.authFailed, T.authFailedDetail, "", "bad");
}

async function submitPin() {
  if (pin.busy || pin.digits.length !== 4 || !pin.authId) return;
  pin.busy = true;
  const digits = pin.digits;
  pin.digits = "";
  drawDots();
  const args = { auth_id: pin.authId, pin: digits };
  // this key reads 「最後の1回を使う」 under the warning: pressing it is the citizen's consent
  if (pin.lastTry) Object.assign(args, { allow_last_try: true, confirmation: pin.confirmation });
  const reply = await command("auth.pin", args);
  pin.busy = false;
  if (reply.ok) { endPin(); show("authenticated", T.authOk, "", "", "ok"); } else { pinError(reply.error); }
}

function endPin() { pin = { active: false, authId: null, digits: "", lastTry: false, confirmation: null, busy: false }; }
function drawDots() { $("pin-dots").textContent = "●".repeat(pin.digits.length) + "○".repeat(4 - pin.digits.length); }

function buildKeypad() {
  const pad = $("keypad");
  const keys = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "clear", "0", "ok"];
  for (const k of keys) {
    const b = document.createElement("button");
    b.type = "button";
    b.id = "key-" + k;
    b.textContent = k === "clear" ? T.clear : k === "ok" ? T.ok : k;
    b.addEventListener("click", () => {
      if (k === "clear") pin.digits = "";
      else if (k === "ok") return submitPin();
      else if (pin.digits.length < 4) pin.digits += k;
      drawDots();
    });
    pad.appendChild(b);
  }
  $("pin-start").textContent = T.pinStart;
  $("pin-cancel").textContent = T.pinCancel;
  $("pin-start").addEventListener("click", () => beginPin());
  $("pin-cancel").addEventListener("click", () => { endPin(); idle(); });
}

// --- events ------------------------------------------------------------------------------------------
async function connect() {
  const session = await openSession();
  if (session === "down") { document.body.dataset.connected = "no"; setTimeout(connect, 1000); return; }
  if (session === "refused") {
    // no secret, or not this boot's: opened without the launcher, or readerd web's secret is new
    document.body.dataset.connected = "refused";
    show("refused", T.refused, T.refusedDetail, "", "bad");
    setTimeout(connect, 5000);
    return;
  }
  if (document.body.dataset.state === "refused") idle();
  const src = new EventSource("/api/kiosk/events?reader=" + encodeURIComponent(READER));
  src.addEventListener("hello", (m) => {
    document.body.dataset.connected = "yes";
    readers = JSON.parse(m.data).readers;
    checkReader(readers);
  });
  src.addEventListener("bus", (m) => {
    const ev = JSON.parse(m.data);
    if (ev.type === "reader.added" || ev.type === "reader.removed") {
      const others = (readers || []).filter((name) => name !== ev.reader);
      readers = ev.type === "reader.added" ? [...others, ev.reader] : others;
      checkReader(readers);
    } else if (ev.type.startsWith("card.")) onCard(ev); else onPlugin(ev);
  });
  src.onerror = () => {
    document.body.dataset.connected = "no";
    // EventSource reconnects by itself, except after a refusal (readerd web restarted: no session)
    if (src.readyState === EventSource.CLOSED) { src.close(); setTimeout(connect, 1000); }
  };
}

buildKeypad();
idle();
connect();
