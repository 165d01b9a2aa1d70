// The rider's phone page: shift, assignments from user:<self>, status taps through an offline queue with undo, GPS while on duty.
//
// Taps are never lost: each one is stored in IndexedDB (queue.js) with its Idempotency-Key and the
// version it expects, waits out the undo window, and is sent in order whenever the network allows;
// a retry of a command whose answer was lost gets the stored answer, so nothing is applied twice.

import { RealtimeClient } from "../realtime/client.js";
import { Tracker } from "./gps.js";
import { RiderStore } from "./queue.js";

const config = JSON.parse(document.getElementById("rider-config").textContent);
const served = document.getElementById("rider-app").dataset.served; // "cache": opened offline
const $ = (id) => document.getElementById(id);
const API = config.api;
const NEXT_STATUS = { pickup: "picked_up", deliver: "delivered" };
const COMMAND_LABEL = { pickup: "Picked up", deliver: "Delivered" };
const REVOKED = {
  cancelled: "was cancelled",
  reassigned: "was given to another rider",
  unassigned: "was taken back by dispatch",
};
const POSITIONS_PAGE = 500;

// ------------------------------------------------------------------ state

let today = JSON.parse($("rider-today").textContent);
const store = await RiderStore.open(config.user_id);
// A copy kept after a later event than the page's (e.g. the page came from the service worker) wins.
const saved = await store.get("today");
if (saved?.stream.epoch === today.stream.epoch && saved.stream.head > today.stream.head) today = saved;
let fresh = served !== "cache";
let actions = await store.all("actions");
let undoTimer = null;

const assignments = new Map(today.active.map((a) => [a.delivery.id, a]));

function saveToday(head) {
  today.active = [...assignments.values()];
  if (head != null) today.stream = { ...today.stream, epoch: sub?.epoch ?? today.stream.epoch, head };
  store.set("today", today).catch(() => {});
}

// ------------------------------------------------------------------ rendering

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c != null));
  return node;
}

const timeFormat = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit" });
const at = (iso) => (iso ? timeFormat.format(new Date(iso)) : "");

function timeLeft(iso) {
  const minutes = Math.round((Date.parse(iso) - Date.now()) / 60000);
  return minutes >= 0 ? { text: `${minutes} min left`, late: false } : { text: `${-minutes} min late`, late: true };
}

function mapLinks(label, lat, lng, address) {
  const query = encodeURIComponent(address);
  const geo = lat != null ? `geo:${lat},${lng}?q=${lat},${lng}(${query})` : `geo:0,0?q=${query}`;
  const web =
    lat != null
      ? `https://www.openstreetmap.org/?mlat=${lat}&mlon=${lng}#map=17/${lat}/${lng}`
      : `https://www.openstreetmap.org/search?query=${query}`;
  return el(
    "span",
    { class: "links" },
    el("a", { class: "button", href: geo, "aria-label": `Navigate to ${label} (maps app)` }, "Navigate"),
    el("a", { class: "button", href: web, target: "_blank", rel: "noopener", "aria-label": `${label} on a web map` }, "Web map"),
  );
}

/** What the rider sees of a delivery: its status after the taps still queued. */
function shownStatus(delivery) {
  const mine = actions.filter((a) => a.delivery === delivery.id);
  return mine.length ? NEXT_STATUS[mine[mine.length - 1].command] : delivery.status;
}

function card({ delivery, order }) {
  const shop = today.shops[String(delivery.shop)] || { name: delivery.shop_name, address: "", lat: null, lng: null };
  const status = shownStatus(delivery);
  const left = timeLeft(delivery.promised_at);
  const queued = actions.filter((a) => a.delivery === delivery.id);
  const items = el("ul", { class: "items" }, ...order.items.map((i) => el("li", {}, `${i.qty} × ${i.name}`)));
  const li = el(
    "li",
    { class: "assignment", id: `assignment-${delivery.id}`, "data-status": status, "data-version": delivery.version },
    el("h3", {}, `#${order.id} · ${shop.name}`),
    el("p", { class: "status" }, status === "picked_up" ? "Picked up: on the way" : "Assigned: go to the shop"),
    el(
      "dl",
      {},
      el("dt", {}, "Pick up"),
      el("dd", {}, shop.address || shop.name, shop.address ? mapLinks("the shop", shop.lat, shop.lng, shop.address) : null),
      el("dt", {}, "Drop off"),
      el("dd", {}, order.address, mapLinks("the customer", order.lat, order.lng, order.address)),
      el("dt", {}, "Customer"),
      el(
        "dd",
        {},
        `${order.customer_name} `,
        el("a", { class: "button", href: `tel:${order.customer_phone.replace(/[^+\d]/g, "")}` }, `Call ${order.customer_phone}`),
      ),
      el("dt", {}, "Items"),
      el("dd", {}, items),
      order.note ? el("dt", {}, "Note") : null,
      order.note ? el("dd", {}, order.note) : null,
      el("dt", {}, "Promised"),
      el(
        "dd",
        {},
        `${at(delivery.promised_at)} · `,
        el("span", { class: left.late ? "late" : "left", "data-promised": delivery.promised_at }, left.text),
      ),
    ),
  );
  const waiting = queued.filter((a) => a.sendAfter > Date.now());
  if (waiting.length) {
    const action = waiting[waiting.length - 1];
    li.append(
      el("p", { class: "pending", role: "status" }, `${COMMAND_LABEL[action.command]}: sending in a few seconds.`),
      el("div", { class: "actions" }, el("button", { type: "button", "data-undo": action.seq }, "Undo")),
    );
  } else if (queued.length) {
    li.append(el("p", { class: "pending", role: "status" }, `${COMMAND_LABEL[queued[queued.length - 1].command]}: waiting to send.`));
  }
  if (!waiting.length) {
    const command = status === "assigned" ? "pickup" : status === "picked_up" ? "deliver" : null;
    if (command) {
      li.append(
        el(
          "div",
          { class: "actions" },
          el(
            "button",
            { type: "button", class: "primary big", "data-command": command, "data-delivery": delivery.id },
            COMMAND_LABEL[command],
          ),
        ),
      );
    }
  }
  return li;
}

function render() {
  const focused = document.activeElement;
  const focusedCard = focused?.closest?.(".assignment")?.id;
  const list = [...assignments.values()]
    .filter(({ delivery }) => !["delivered", "cancelled"].includes(shownStatus(delivery)))
    .sort((a, b) => Date.parse(a.delivery.promised_at) - Date.parse(b.delivery.promised_at));
  $("assignments").replaceChildren(...list.map(card));
  $("active-count").textContent = list.length ? `(${list.length})` : "";
  $("no-active").hidden = list.length > 0;
  // Keep the keyboard where it was: on the same card's button (Undo, or the next step).
  if (focusedCard) document.querySelector(`#${focusedCard} button`)?.focus();
  renderHistory();
  renderConnection();
}

function renderHistory() {
  $("count-delivered").textContent = today.counts.delivered;
  $("count-cancelled").textContent = today.counts.cancelled;
  $("count-distance").textContent = `${(today.counts.distance_m / 1000).toFixed(1)} km`;
  $("no-history").hidden = today.history.length > 0;
  $("history").replaceChildren(
    ...today.history.map((d) =>
      el(
        "li",
        { id: `history-${d.id}`, "data-status": d.status },
        el("span", {}, `#${d.order} · ${d.shop_name}`),
        el(
          "span",
          { class: d.status },
          d.status === "delivered" ? `Delivered ${at(d.delivered_at)}` : `Cancelled ${at(d.cancelled_at)}`,
        ),
      ),
    ),
  );
}

function alertRider(text, kind = "revoked") {
  const dismiss = el("button", { type: "button", "data-dismiss": "", "aria-label": "OK, dismiss this message" }, "OK");
  const note = el("div", { class: `alert ${kind}` }, el("span", {}, text), dismiss);
  $("alerts").prepend(note);
  if (kind !== "info") navigator.vibrate?.(kind === "new" ? [200, 100, 200] : [400, 150, 400, 150, 400]);
  if (kind !== "info") beep(kind === "new" ? 880 : 440);
}

// Sound needs a user gesture first (autoplay rules): the audio context is unlocked on the first tap.
let audio = null;
document.addEventListener(
  "pointerdown",
  () => {
    audio ??= new AudioContext();
    audio.resume?.();
  },
  { once: true },
);
function beep(frequency) {
  if (!audio || audio.state !== "running") return;
  const oscillator = audio.createOscillator();
  const gain = audio.createGain();
  oscillator.frequency.value = frequency;
  gain.gain.value = 0.2;
  oscillator.connect(gain).connect(audio.destination);
  oscillator.start();
  oscillator.stop(audio.currentTime + 0.3);
}

// ------------------------------------------------------------------ applying the server's news

function toHistory(delivery) {
  today.history = [delivery, ...today.history.filter((d) => d.id !== delivery.id)];
  today.counts[delivery.status] = today.history.filter((d) => d.status === delivery.status).length;
}

/** A delivery as the server now has it (a command's answer, a 409's `current`, an event). */
function applyDelivery(delivery, order) {
  const shown = assignments.get(delivery.id);
  if (shown && shown.delivery.version > delivery.version) return;
  if (delivery.rider !== config.rider_id || !["assigned", "picked_up"].includes(delivery.status)) {
    assignments.delete(delivery.id);
    if (["delivered", "cancelled"].includes(delivery.status) && delivery.rider === config.rider_id) toHistory(delivery);
    return;
  }
  if (shown) assignments.set(delivery.id, { delivery, order: order ?? shown.order });
  else if (order) assignments.set(delivery.id, { delivery, order });
}

function onUserEvent(frame) {
  const { data } = frame;
  if (frame.event === "assignment.new") {
    const known = assignments.get(data.delivery.id);
    if (known && known.delivery.version >= data.delivery.version) return;
    if (!today.shops[String(data.delivery.shop)]) refreshToday();
    applyDelivery(data.delivery, data.order);
    if (!known) alertRider(`New delivery #${data.order.id} from ${data.delivery.shop_name}`, "new");
  } else if (frame.event === "assignment.revoked") {
    const known = assignments.get(data.delivery.id);
    if (known && known.delivery.version > data.delivery.version) return;
    assignments.delete(data.delivery.id);
    if (data.reason === "cancelled") toHistory(data.delivery);
    if (known || data.reason === "cancelled") {
      const what = REVOKED[data.reason] ?? "was taken off your list";
      alertRider(`Order #${data.delivery.order} ${what}. Do not ${data.was_picked_up ? "deliver it" : "pick it up"}.`);
    }
  } else if (frame.event === "notice" || frame.event === "chat.message") {
    if (frame.event === "notice") alertRider(data.text, "info");
    return;
  }
  saveToday(frame.seq);
  render();
}

async function refreshToday() {
  // Only what was shown before asking may be dropped: an assignment that arrived meanwhile is newer than the answer.
  const before = new Map([...assignments].map(([id, shown]) => [id, shown.delivery.version]));
  try {
    const response = await fetch(`${API}/rider/today`, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) return;
    const next = await response.json();
    const current = new Set(next.active.map((a) => a.delivery.id));
    for (const [id, version] of before) {
      if (!current.has(id) && assignments.get(id)?.delivery.version === version) assignments.delete(id);
    }
    for (const { delivery, order } of next.active) applyDelivery(delivery, order);
    Object.assign(today, { rider: next.rider, shops: next.shops, history: next.history, counts: next.counts });
    fresh = true;
    saveToday();
    renderDuty();
    render();
  } catch {
    // offline: what is shown stays, marked as possibly out of date
  }
}

// ------------------------------------------------------------------ the action queue

function csrfToken() {
  return document.cookie.split("; ").find((c) => c.startsWith("csrftoken="))?.split("=")[1] || "";
}

async function tap(deliveryId, command) {
  const shown = assignments.get(deliveryId);
  if (!shown) return;
  const queued = actions.filter((a) => a.delivery === deliveryId).length;
  // Each command bumps the version by one: a tap behind a queued one expects the version after it.
  const action = await store.add("actions", {
    key: crypto.randomUUID(),
    delivery: deliveryId,
    order: shown.order.id,
    command,
    version: shown.delivery.version + queued,
    sendAfter: Date.now() + config.undo_ms,
  });
  actions.push(action);
  render();
  if (!sending) scheduleSend(Math.max(0, actions[0].sendAfter - Date.now()));
  setTimeout(render, config.undo_ms + 50); // the undo window closes even if the action cannot be sent yet
}

async function undo(seq) {
  const action = actions.find((a) => a.seq === seq);
  if (!action || sending === action || action.sendAfter <= Date.now()) return; // too late: on its way
  await store.delete("actions", seq);
  actions = actions.filter((a) => a.seq !== seq);
  render();
}

let sending = null;
let retryDelay = 1000;
let needsLogin = false; // the session ended: the queue waits for a new login

function scheduleSend(delay = 0) {
  clearTimeout(undoTimer);
  undoTimer = setTimeout(sendQueued, delay);
}

function explain(action, status, body) {
  const what = `${COMMAND_LABEL[action.command]} for order #${action.order}`;
  if (status === 404) return `${what} was not accepted: this delivery is no longer yours.`;
  if (body?.current?.status === "cancelled") return `${what} was not accepted: the order was cancelled.`;
  const detail = typeof body?.detail === "string" ? body.detail : "the server refused it";
  return `${what} was not accepted: ${detail}`;
}

function refuse(action, message) {
  $("refusals").append(
    el(
      "li",
      { "data-order": action.order },
      el("span", {}, message),
      el("button", { type: "button", "data-dismiss": "", "aria-label": "OK, dismiss this message" }, "OK"),
    ),
  );
}

/** Send the queue's actions one at a time, in order; stop at the first one that must wait. */
async function sendQueued() {
  if (sending) return;
  while (actions.length) {
    const action = actions[0];
    const wait = action.sendAfter - Date.now();
    if (wait > 0) return scheduleSend(wait);
    sending = action;
    render();
    let response;
    let body = null;
    try {
      response = await fetch(`${API}/deliveries/${action.delivery}/${action.command}`, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken(), "Idempotency-Key": action.key },
        body: JSON.stringify({ version: action.version }),
      });
      body = await response.json().catch(() => null);
    } catch {
      response = null; // offline or the answer was lost: the same key makes the retry safe
    }
    sending = null;
    needsLogin = response?.status === 401;
    if (!response || response.status >= 500 || response.status === 429 || response.status === 401) {
      renderConnection();
      retryDelay = Math.min(30000, retryDelay * 2);
      return scheduleSend(retryDelay);
    }
    retryDelay = 1000;
    await store.delete("actions", action.seq);
    actions.shift();
    if (response.ok) {
      applyDelivery(body);
    } else {
      // Refused for good (cancelled, reassigned, changed meanwhile): say why, drop what depended on it.
      refuse(action, explain(action, response.status, body));
      if (body?.current?.id === action.delivery) applyDelivery(body.current);
      else if (response.status === 404) assignments.delete(action.delivery);
      const dependent = actions.filter((a) => a.delivery === action.delivery);
      for (const next of dependent) {
        refuse(next, `${COMMAND_LABEL[next.command]} for order #${next.order} was not sent: the step before it was refused.`);
      }
      await store.delete("actions", dependent.map((a) => a.seq));
      actions = actions.filter((a) => a.delivery !== action.delivery);
    }
    saveToday();
    render();
  }
}

// ------------------------------------------------------------------ connection

const rt = new RealtimeClient();
let sub = null;

function isOffline() {
  return !navigator.onLine || ["reconnecting", "closed"].includes(rt.state);
}

function renderConnection() {
  const badge = $("conn-state");
  const queued = actions.length;
  const waiting = queued ? ` — ${queued} action${queued === 1 ? "" : "s"} queued` : "";
  let state = "reconnecting";
  let text = "Reconnecting…";
  if (!navigator.onLine) [state, text] = ["offline", "Offline"];
  else if (["live", "resynced", "polling"].includes(rt.state)) [state, text] = ["live", "Live"];
  else if (rt.state === "connecting" && !sub) [state, text] = ["connecting", "Connecting…"];
  badge.dataset.state = state;
  badge.textContent = text + waiting;
  const line = $("queue-state");
  line.hidden = queued === 0;
  line.textContent = `${queued} action${queued === 1 ? "" : "s"} waiting to send`;
  if (needsLogin) line.textContent += ": log in again to send them";
  const stale = !fresh || isOffline();
  $("stale-note").hidden = !stale;
  for (const item of document.querySelectorAll(".assignment")) item.dataset.stale = String(stale);
}

let wasLive = false;
rt.addEventListener("state", ({ detail }) => {
  const live = ["live", "resynced"].includes(detail.state);
  if (live && !wasLive) {
    refreshToday(); // a dispatcher may have picked up or delivered for the rider meanwhile
    scheduleSend();
    flushFixes();
  }
  wasLive = live;
  renderConnection();
});
addEventListener("online", () => {
  scheduleSend();
  flushFixes();
  renderConnection();
});
addEventListener("offline", renderConnection);

sub = rt.subscribe(today.stream.name, {
  since: today.stream.head,
  epoch: today.stream.epoch,
  onEvent: onUserEvent,
  onReset: (snapshot) => {
    saveToday(snapshot.head);
    refreshToday();
  },
});

// ------------------------------------------------------------------ duty, GPS, wake lock

const accuracySelect = $("accuracy-limit");
accuracySelect.value = localStorage.getItem("bros.rider.accuracy") ?? accuracySelect.value;
const tracker = new Tracker({ accuracyLimit: Number(accuracySelect.value) });
accuracySelect.addEventListener("change", () => {
  tracker.accuracyLimit = Number(accuracySelect.value);
  localStorage.setItem("bros.rider.accuracy", accuracySelect.value);
});

const TRACKING_TEXT = {
  off: "GPS off: you are off duty.",
  waiting: "Finding your location…",
  searching: "Searching for a GPS signal…",
  on: "Sharing your location with dispatch.",
  inaccurate: "Location too inaccurate to share; waiting for a better fix.",
  paused: "Tracking paused: keep this page open in front to share your location.",
  denied: "Tracking paused: location permission is denied. Allow location for this site in the browser settings.",
  unsupported: "Tracking unavailable: this browser cannot share a location.",
};
tracker.addEventListener("state", ({ detail }) => {
  const line = $("tracking");
  line.dataset.state = detail.state;
  const accuracy = detail.state === "on" && detail.accuracy ? ` (±${Math.round(detail.accuracy)} m)` : "";
  line.textContent = TRACKING_TEXT[detail.state] + accuracy;
});

let bufferedFixes = await store.count("fixes");
tracker.addEventListener("fix", async ({ detail: fix }) => {
  // Once fixes wait in the buffer, newer ones queue behind them: the server drops fixes older than its latest.
  if (bufferedFixes === 0 && navigator.onLine && rt.sendPosition(fix)) return;
  bufferedFixes++;
  await store.add("fixes", fix);
  if (navigator.onLine && !flushing) flushFixes();
});

let flushing = false;
async function flushFixes() {
  if (flushing) return;
  flushing = true;
  try {
    for (;;) {
      const batch = await store.all("fixes", POSITIONS_PAGE);
      if (!batch.length) break;
      const response = await fetch(`${API}/positions`, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
        body: JSON.stringify({ positions: batch.map(({ seq, ...fix }) => fix) }),
      });
      if (response.status >= 500 || response.status === 429 || response.status === 401) {
        const after = Number(response.headers.get("Retry-After")) || 5;
        setTimeout(flushFixes, after * 1000);
        break;
      }
      // Accepted, or refused for good (e.g. too old): either way these fixes are done.
      await store.delete("fixes", batch.map((f) => f.seq));
    }
  } catch {
    // offline again: the fixes stay for the next try
  } finally {
    bufferedFixes = await store.count("fixes");
    flushing = false;
  }
}

let wakeLock = null;
async function keepAwake(on) {
  if (!on) {
    await wakeLock?.release().catch(() => {});
    wakeLock = null;
    return;
  }
  if (wakeLock || document.hidden || !("wakeLock" in navigator)) return;
  try {
    wakeLock = await navigator.wakeLock.request("screen");
    wakeLock.addEventListener("release", () => {
      wakeLock = null;
    });
  } catch {
    // refused (battery saver, not visible): the screen may sleep; nothing else to do
  }
}
document.addEventListener("visibilitychange", () => keepAwake(today.rider.on_duty));

function renderDuty() {
  const on = today.rider.on_duty;
  $("duty-state").textContent = on ? "On duty" : "Off duty";
  const toggle = $("duty-toggle");
  toggle.dataset.onDuty = String(on);
  toggle.textContent = on ? "End shift" : "Start shift";
  if (on) tracker.start();
  else tracker.stop();
  keepAwake(on);
}

async function toggleDuty() {
  const toggle = $("duty-toggle");
  const error = $("duty-error");
  const onDuty = !today.rider.on_duty;
  error.hidden = true;
  toggle.disabled = true;
  if (!onDuty) tracker.stop(); // no fix may arrive after the shift ends
  try {
    const response = await fetch(`${API}/riders/${config.rider_id}/duty`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken(), "Idempotency-Key": crypto.randomUUID() },
      body: JSON.stringify({ on_duty: onDuty }),
    });
    const body = await response.json().catch(() => null);
    if (response.ok) today.rider = body;
    else {
      if (body?.current) today.rider = body.current;
      error.textContent = typeof body?.detail === "string" ? body.detail : "Could not change your shift. Try again.";
      error.hidden = false;
    }
  } catch {
    error.textContent = `You are offline: your shift can be ${onDuty ? "started" : "ended"} once you are connected again.`;
    error.hidden = false;
  }
  toggle.disabled = false;
  saveToday();
  renderDuty();
}

// ------------------------------------------------------------------ wiring

$("duty-toggle").addEventListener("click", toggleDuty);
// Logging out on a shared phone: the next person must not open this rider's page from the cache.
document.querySelector("form.logout")?.addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const unsent = actions.length;
  if (unsent && !confirm(`${unsent} action${unsent === 1 ? " has" : "s have"} not been sent yet. Log out anyway?`)) return;
  await Promise.all([globalThis.caches?.delete(config.cache), store.set("today", null)].map((p) => p?.catch?.(() => {})));
  form.submit();
});
document.addEventListener("click", (event) => {
  const target = event.target.closest("button");
  if (!target) return;
  if (target.dataset.command) tap(Number(target.dataset.delivery), target.dataset.command);
  else if (target.dataset.undo) undo(Number(target.dataset.undo));
  else if (target.dataset.dismiss != null) target.parentElement.remove();
});

// Time left ticks on its own: re-rendering the cards under a finger could swallow a tap.
setInterval(() => {
  for (const span of document.querySelectorAll("[data-promised]")) {
    const left = timeLeft(span.dataset.promised);
    span.textContent = left.text;
    span.className = left.late ? "late" : "left";
  }
}, 30000);
if (!store.persistent) {
  alertRider("This browser keeps no offline queue here (private mode?): taps not yet sent are lost if the page closes.", "info");
}
renderDuty();
render();
if (actions.length) scheduleSend();
if (bufferedFixes) flushFixes();
if ("serviceWorker" in navigator) navigator.serviceWorker.register(config.service_worker, { scope: config.scope }).catch(() => {});

window.__rider = { rt, store, tracker, assignments, actions: () => actions };
