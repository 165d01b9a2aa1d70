// The dispatcher board: a virtual list of the center's deliveries kept live, riders on a map, assignment.
import { RealtimeClient } from "../realtime/client.js";
import { showConnectionState } from "../realtime/status.js";
import { rankRiders } from "./suggest.js";
import { URGENCY_LATE, isOpen, urgencyOf } from "./urgency.js";

const config = JSON.parse(document.getElementById("board-config").textContent);
const ROW_H = config.row_height;
const OVERSCAN = 15;
const REFRESH_DELAY = 250; // ms: coalesce a burst of events into one window refresh
const REFRESH_MAX_WAIT = 1000;

const viewport = document.getElementById("viewport");
const rowsEl = document.getElementById("rows");
const grid = document.querySelector(".grid[role=grid]");
const filters = document.getElementById("filters");
const drawer = document.getElementById("drawer");
const dialog = document.getElementById("assign-dialog");
const lateAlert = document.getElementById("late-alert");

const known = new Map(); // delivery id -> highest version seen (events or rows)
let windowOffset = Number(rowsEl.querySelector(".window")?.dataset.offset || 0);
let total = Number(rowsEl.querySelector(".window")?.dataset.total || 0);
let windowStale = false;
let refreshTimer = null;
let refreshFirstAsked = 0;

// ---------------------------------------------------------------- rows and the virtual window

// htmx fetches and swaps the row windows (#rows: hx-get, hx-sync, and the counts, total and list
// height out of band); this script decides when, and which rows, a window must hold.

function csrfToken() {
  return document.cookie.split("; ").find((c) => c.startsWith("csrftoken="))?.split("=")[1] || "";
}

function filterQuery() {
  const params = new URLSearchParams(new FormData(filters));
  for (const [key, value] of [...params]) if (!value) params.delete(key);
  return params;
}

// The list's scroll position and height, as the scroll handler and a ResizeObserver last saw them.
// Reading them from the DOM when a queued request leaves (right after a swap, in the same task)
// would force a layout of the new window that the next frame then does again.
let scrollTop = viewport.scrollTop;
let viewportHeight = viewport.clientHeight;
new ResizeObserver(([entry]) => {
  viewportHeight = entry.target.clientHeight;
}).observe(viewport);

function visibleRange() {
  const first = Math.floor(scrollTop / ROW_H);
  const count = Math.ceil(viewportHeight / ROW_H);
  return { first, count };
}

function windowCovers(first, count) {
  const rows = rowsEl.querySelectorAll(".row").length;
  return first >= windowOffset && first + count <= windowOffset + rows || (windowOffset === 0 && rows >= total);
}

// hx-sync="this:queue last": one rows request at a time, asks that come meanwhile become one
// follow-up, and every response is applied, so a slow server delays the window but never starves it.
function loadWindow({ force = false } = {}) {
  const { first, count } = visibleRange();
  if (force || !windowCovers(first, count)) htmx.trigger(rowsEl, "board-refresh");
}

// #rows' own swap style: the new window goes in as it came. htmx's innerHTML would also search its
// ~800 new elements for hx- attributes (a row window has none) and fire a load event for each row:
// most of what made the htmx swap dearer than the hand-written one.
htmx.defineExtension("row-window", {
  handleSwap(style, target, fragment) {
    if (style !== "row-window") return false;
    target.replaceChildren(fragment);
    return true; // not an array: htmx has nothing to process or settle inside
  },
});

rowsEl.addEventListener("htmx:configRequest", (event) => {
  // Read when the request leaves (a queued one too), so the window covers where the list is then.
  const { first, count } = visibleRange();
  event.detail.parameters.offset = Math.max(0, first - OVERSCAN);
  event.detail.parameters.limit = count + 2 * OVERSCAN;
});

for (const failure of ["htmx:sendError", "htmx:responseError"]) {
  rowsEl.addEventListener(failure, () => {
    windowStale = true; // offline or a server error: reload once the connection is back
  });
}

let shownRows = new Map(); // the rows on screen just before a swap, by delivery id
let focusedRow = null;

rowsEl.addEventListener("htmx:beforeSwap", (event) => {
  if (event.target !== rowsEl || !event.detail.shouldSwap) return;
  shownRows = new Map([...rowsEl.querySelectorAll(".row[data-id]")].map((row) => [row.dataset.id, row]));
  focusedRow = rowsEl.contains(document.activeElement) ? document.activeElement.id : null;
});

// settle:0ms: this runs in the same task as the swap, before any paint.
rowsEl.addEventListener("htmx:afterSettle", (event) => {
  if (event.target !== rowsEl) return;
  windowStale = false;
  applyWindow(rowsEl.querySelector(".window"));
  if (focusedRow) document.getElementById(focusedRow)?.focus({ preventScroll: true });
});

function applyWindow(fresh) {
  // Never let an older response replace a row the page already shows at a newer version.
  for (const row of fresh.querySelectorAll(".row[data-id]")) {
    const id = row.dataset.id;
    const version = Number(row.dataset.version);
    const current = shownRows.get(id);
    const shown = current ? Number(current.dataset.version) : 0;
    if (current && shown > version) {
      row.replaceWith(current);
      continue;
    }
    if (current && version > shown) row.classList.add("flash");
    if (known.has(id) && known.get(id) > version) row.classList.add("stale"); // an event is newer still
    known.set(id, Math.max(known.get(id) || 0, version));
  }
  shownRows = new Map();
  windowOffset = Number(fresh.dataset.offset);
  total = Number(fresh.dataset.total);
  grid.setAttribute("aria-rowcount", total); // the spacer, the counts and the total came out of band
  updateLateAlert(JSON.parse(fresh.dataset.counts).late_ids);
  tickTimers();
}

function scheduleRefresh() {
  const now = performance.now();
  if (!refreshTimer) refreshFirstAsked = now;
  clearTimeout(refreshTimer);
  const wait = Math.max(0, Math.min(REFRESH_DELAY, refreshFirstAsked + REFRESH_MAX_WAIT - now));
  refreshTimer = setTimeout(() => {
    refreshTimer = null;
    loadWindow({ force: true });
  }, wait);
}

let scrollQueued = false;
viewport.addEventListener("scroll", () => {
  scrollTop = viewport.scrollTop;
  if (scrollQueued) return;
  scrollQueued = true;
  requestAnimationFrame(() => {
    scrollQueued = false;
    loadWindow();
  });
});

filters.addEventListener("input", (event) => {
  if (event.target.name === "q") {
    clearTimeout(filters._debounce);
    filters._debounce = setTimeout(applyFilters, 250);
  } else {
    applyFilters();
  }
});
// A chip is a toggle button (aria-pressed); the hidden input inside it is sent only while it is pressed.
filters.addEventListener("click", (event) => {
  const chip = event.target.closest(".chip[aria-pressed]");
  if (!chip) return;
  const pressed = chip.getAttribute("aria-pressed") !== "true";
  chip.setAttribute("aria-pressed", String(pressed));
  chip.querySelector("input").disabled = !pressed;
  applyFilters();
});
filters.addEventListener("submit", (event) => {
  event.preventDefault();
  applyFilters();
});

function applyFilters() {
  const params = filterQuery(); // the rows request sends the form itself (hx-include)
  history.replaceState(null, "", params.toString() ? `?${params}` : location.pathname);
  viewport.scrollTop = scrollTop = 0;
  loadWindow({ force: true });
}

// ---------------------------------------------------------------- late alerts

// The alert follows delivery ids of the whole center (not counts, not the filtered view): a
// delivery that closes while another goes late, or a widened filter, cannot hide or fake one.
let lateNow = new Set();
let lateAcknowledged = null; // ids late when the page opened, or acknowledged since
let freshShown = 0;

function updateLateAlert(lateIds) {
  lateNow = new Set(lateIds || []);
  if (lateAcknowledged === null) lateAcknowledged = new Set(lateNow);
  const fresh = [...lateNow].filter((id) => !lateAcknowledged.has(id)).length;
  if (fresh > freshShown) beep();
  freshShown = fresh;
  lateAlert.querySelector(".count").textContent = fresh;
  lateAlert.hidden = fresh === 0;
}

lateAlert.addEventListener("click", () => {
  for (const id of lateNow) lateAcknowledged.add(id);
  freshShown = 0;
  lateAlert.hidden = true;
});

let audio = null;

function beep() {
  try {
    audio ??= new AudioContext(); // one context for the page: each one holds audio resources
    const tone = audio.createOscillator();
    tone.frequency.value = 880;
    tone.connect(audio.destination);
    tone.start();
    tone.stop(audio.currentTime + 0.25);
  } catch {
    // Browsers refuse audio before the first user gesture; the badge still shows.
  }
}

// ---------------------------------------------------------------- age / SLA timers (visible rows only)

function minutes(ms) {
  const m = Math.floor(Math.abs(ms) / 60000);
  return m >= 60 ? `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}` : `${m}m`;
}

function tickTimers() {
  const now = Date.now();
  let turnedLate = false;
  const sla = { now, unassignedMinutes: config.sla.unassigned_minutes };
  for (const row of rowsEl.querySelectorAll(".row[data-id]")) {
    const status = row.dataset.status;
    const open = isOpen(status);
    const promised = Date.parse(row.dataset.promised);
    const ready = Date.parse(row.dataset.ready);
    const created = Date.parse(row.dataset.created);
    const urgency = urgencyOf({ status, created, ready, promised }, sla);
    if (urgency === URGENCY_LATE && !row.classList.contains("urgency-3")) turnedLate = true;
    row.classList.remove("urgency-0", "urgency-1", "urgency-2", "urgency-3");
    row.classList.add(`urgency-${urgency}`);
    const cell = row.querySelector("[data-timer]");
    if (!open) cell.textContent = "";
    else if (urgency === URGENCY_LATE) cell.textContent = `late ${minutes(now - promised)}`;
    else cell.textContent = `${minutes(now - created)} old · ${minutes(promised - now)} left`;
  }
  if (turnedLate) scheduleRefresh(); // a delivery went late with no event: update counts and alert
}
setInterval(tickTimers, 1000);
// Deliveries outside the window go late with no event either: #rows also refreshes every 30 s (hx-trigger).

// ---------------------------------------------------------------- riders: state, panel, map

const riders = new Map(); // id -> {id, name, status, load, lat, lng, ts, version, on_duty}
for (const rider of JSON.parse(document.getElementById("board-riders").textContent)) {
  riders.set(rider.id, { ...rider, ts: rider.last_seen ? Date.parse(rider.last_seen) : null });
}
const ridersEl = document.getElementById("riders");

function gpsText(rider, now) {
  if (!rider.ts) return "no GPS";
  const age = Math.max(0, Math.round((now - rider.ts) / 1000));
  if (age > config.sla.stale_gps_seconds) {
    return `last seen ${new Date(rider.ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}`;
  }
  return age < 60 ? `GPS ${age} s ago` : `GPS ${Math.round(age / 60)} min ago`;
}

const riderItems = new Map(); // id -> {li, name, status, meta}: built once, then only updated
const byName = new Intl.Collator().compare;

function riderItem(rider) {
  let item = riderItems.get(rider.id);
  if (!item) {
    const li = document.createElement("li");
    li.dataset.rider = rider.id;
    const [name, status, meta] = ["name", "status", "meta"].map((cls) => {
      const span = li.appendChild(document.createElement("span"));
      span.className = cls;
      return span;
    });
    item = { li, name, status, meta };
    riderItems.set(rider.id, item);
  }
  return item;
}

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

function renderRiders() {
  const now = Date.now();
  const order = { busy: 0, available: 1, offline: 2 };
  const sorted = [...riders.values()].sort((a, b) => order[a.status] - order[b.status] || byName(a.name, b.name));
  for (const rider of sorted) {
    const item = riderItem(rider);
    const stale = rider.status !== "offline" && (!rider.ts || now - rider.ts > config.sla.stale_gps_seconds * 1000);
    const className = `${rider.status}${stale ? " stale" : ""}`;
    if (item.li.className !== className) item.li.className = className;
    setText(item.name, rider.name);
    setText(item.status, rider.status === "offline" ? "off duty" : rider.load ? `${rider.load} active` : "idle");
    setText(item.meta, rider.status === "offline" ? "" : gpsText(rider, now));
  }
  const current = ridersEl.children;
  if (current.length !== sorted.length || sorted.some((rider, i) => current[i] !== riderItems.get(rider.id).li)) {
    ridersEl.replaceChildren(...sorted.map((rider) => riderItems.get(rider.id).li));
  }
}

// Rider events and position batches arrive many per second: draw at most once per RIDERS_REDRAW ms.
const RIDERS_REDRAW = 500;
const changedRiders = new Set();
let ridersTimer = null;
function scheduleRiders(...ids) {
  for (const id of ids) changedRiders.add(id);
  if (ridersTimer) return;
  ridersTimer = setTimeout(() => {
    ridersTimer = null;
    renderRiders();
    drawRiders(changedRiders);
    changedRiders.clear();
  }, RIDERS_REDRAW);
}
renderRiders();
setInterval(() => {
  renderRiders(); // GPS ages
  drawRiders(); // colours of riders gone stale (only changed colours are restyled)
}, 5000);

let map = null;
const markers = new Map();
let selectionLayer = null;
const mapEl = document.getElementById("map");
const MAP_LABEL = mapEl.getAttribute("aria-label");
const CENTER_ZOOM = 13;

function initMap() {
  if (!window.L) return;
  map = L.map("map", { preferCanvas: true, zoomControl: true }).setView([config.map.lat, config.map.lng], CENTER_ZOOM);
  if (config.map.tiles) L.tileLayer(config.map.tiles, { attribution: config.map.attribution, maxZoom: 19 }).addTo(map);
  drawRiders();
}

function markerColor(rider) {
  if (rider.status === "offline") return "#98a2b3";
  if (!rider.ts || Date.now() - rider.ts > config.sla.stale_gps_seconds * 1000) return "#667085";
  return rider.status === "busy" ? "#0b6bcb" : "#12b76a";
}

function drawRiders(only = null) {
  if (!map) return;
  for (const rider of only ? [...only].map((id) => riders.get(id)).filter(Boolean) : riders.values()) {
    if (rider.lat == null || rider.status === "offline") {
      markers.get(rider.id)?.remove();
      markers.delete(rider.id);
      continue;
    }
    let marker = markers.get(rider.id);
    if (!marker) {
      marker = L.circleMarker([rider.lat, rider.lng], { radius: 6, weight: 1, color: null }).bindTooltip(rider.name).addTo(map);
      markers.set(rider.id, marker);
    } else {
      marker.setLatLng([rider.lat, rider.lng]);
      if (marker.getTooltip()?.getContent() !== rider.name) marker.setTooltipContent(rider.name); // renamed
    }
    const color = markerColor(rider);
    if (marker.options.color !== color) marker.setStyle({ color, fillColor: color, fillOpacity: 0.85 });
  }
}

function showSelection(row) {
  if (!map) return;
  selectionLayer?.remove();
  const points = [[Number(row.dataset.shopLat), Number(row.dataset.shopLng)]];
  const layers = [L.circleMarker(points[0], { radius: 8, color: "#7a2e0e", fillOpacity: 0.9 }).bindTooltip("Shop")];
  if (row.dataset.lat) {
    points.push([Number(row.dataset.lat), Number(row.dataset.lng)]);
    layers.push(L.circleMarker(points[1], { radius: 8, color: "#6941c6", fillOpacity: 0.9 }).bindTooltip("Drop-off"));
  }
  selectionLayer = L.layerGroup(layers).addTo(map);
  map.fitBounds(points, { maxZoom: 15, padding: [30, 30], animate: false });
  mapEl.setAttribute("aria-label", `${MAP_LABEL}, showing the shop and drop-off of order ${row.querySelector(".c-no").textContent}`);
}

// Back to the whole center once neither the drawer nor the dialog shows a delivery any more.
function showWholeCenter() {
  if (!map || !drawer.hidden || dialog.open) return;
  selectionLayer?.remove();
  selectionLayer = null;
  map.setView([config.map.lat, config.map.lng], CENTER_ZOOM, { animate: false });
  mapEl.setAttribute("aria-label", MAP_LABEL);
}

function closeDrawer() {
  drawer.hidden = true;
  showWholeCenter();
}
dialog.addEventListener("close", showWholeCenter);

(window.requestIdleCallback || setTimeout)(initMap); // the map never delays the list or the dialog

// ---------------------------------------------------------------- commands (assign, unassign, cancel)

async function command(url, body) {
  const response = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken(), "Idempotency-Key": crypto.randomUUID() },
    body: JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  return { ok: response.ok, status: response.status, data };
}

function refusalText({ status, data }) {
  let text = typeof data.detail === "string" ? data.detail : "The command was refused.";
  if (status === 409 && data.changed_by) {
    const at = new Date(data.changed_by.at).toLocaleTimeString();
    text += ` Changed by ${data.changed_by.by} (${data.changed_by.action}) at ${at}.`;
  }
  if (Array.isArray(data.detail)) text = data.detail.map((e) => e.msg).join(" ");
  return text;
}

// ---------------------------------------------------------------- assign dialog (no round trip to open)

const candidatesEl = dialog.querySelector(".candidates");
const conflictEl = dialog.querySelector(".conflict");
let assigning = null;

function openAssign(row) {
  assigning = {
    id: row.dataset.id,
    version: Number(row.dataset.version),
    rider: Number(row.dataset.rider) || null,
    shop: { lat: Number(row.dataset.shopLat), lng: Number(row.dataset.shopLng) },
  };
  dialog.querySelector(".order-no").textContent = row.querySelector(".c-no").textContent;
  conflictEl.hidden = true;
  renderCandidates();
  dialog.showModal();
  candidatesEl.focus();
  requestAnimationFrame(() => setTimeout(() => showSelection(row), 0)); // the map after the dialog is on screen
}

function renderCandidates() {
  const ranked = rankRiders([...riders.values()], {
    lat: assigning.shop.lat,
    lng: assigning.shop.lng,
    now: Date.now(),
    weights: config.suggest,
  }).filter((c) => c.rider.id !== assigning.rider);
  const shown = ranked.slice(0, CANDIDATES_SHOWN);
  candidatesEl.replaceChildren(...shown.map((candidate, index) => candidateItem(candidate, index === 0)));
  if (!ranked.length) candidatesEl.innerHTML = `<li class="empty">No rider on duty.</li>`;
  if (ranked.length > shown.length) {
    const more = document.createElement("li");
    more.className = "more";
    more.textContent = `Show all ${ranked.length} riders`;
    more.addEventListener("click", (event) => {
      event.stopPropagation();
      more.replaceWith(...ranked.slice(shown.length).map((candidate) => candidateItem(candidate, false)));
    });
    candidatesEl.append(more);
  }
}

const CANDIDATES_SHOWN = 30; // the best ones; the rest on demand

function candidateItem(candidate, selected) {
  const li = document.createElement("li");
  li.setAttribute("role", "option");
  li.dataset.rider = candidate.rider.id;
  li.setAttribute("aria-selected", selected ? "true" : "false");
  if (candidate.stale) li.classList.add("stale");
  const name = li.appendChild(document.createElement("span"));
  name.className = "name";
  name.textContent = candidate.rider.name;
  const reason = li.appendChild(document.createElement("span"));
  reason.className = "reason";
  reason.textContent = candidate.reason;
  return li;
}

function moveSelection(step) {
  const options = [...candidatesEl.querySelectorAll("[role=option]")];
  if (!options.length) return;
  const current = options.findIndex((o) => o.getAttribute("aria-selected") === "true");
  const next = Math.min(options.length - 1, Math.max(0, current + step));
  options.forEach((o, i) => o.setAttribute("aria-selected", i === next ? "true" : "false"));
  options[next].scrollIntoView({ block: "nearest" });
}

async function assignSelected(option) {
  if (!option || !assigning) return;
  const result = await command(`/api/v1/deliveries/${assigning.id}/assign`, {
    rider: Number(option.dataset.rider),
    version: assigning.version,
  });
  if (result.ok) {
    dialog.close();
    scheduleRefresh();
  } else {
    // Show what changed and who changed it; a second Enter is a new, informed decision.
    let text = refusalText(result);
    const current = result.data.current;
    if (current) {
      Object.assign(assigning, { version: current.version, rider: current.rider });
      text += current.rider_name ? ` Now assigned to ${current.rider_name}.` : ` Now ${current.status}.`;
      if (current.status === "waiting" || current.status === "assigned") {
        text += " Choose a rider again to reassign.";
        renderCandidates();
      } else {
        candidatesEl.replaceChildren();
      }
    }
    conflictEl.textContent = text;
    conflictEl.hidden = false;
    scheduleRefresh();
  }
}

candidatesEl.addEventListener("keydown", (event) => {
  if (event.key === "ArrowDown") moveSelection(1);
  else if (event.key === "ArrowUp") moveSelection(-1);
  else if (event.key === "Enter") assignSelected(candidatesEl.querySelector("[aria-selected=true]"));
  else return;
  event.preventDefault();
});
candidatesEl.addEventListener("click", (event) => assignSelected(event.target.closest("[role=option]")));

// ---------------------------------------------------------------- detail drawer

// htmx loads the drawer (hx-sync on #drawer: a newer request replaces an older one); offline or on
// an error it keeps what it shows.
async function openDrawer(id, { keepFocus = false } = {}) {
  const url = `/dispatch/${config.center}/deliveries/${id}/`;
  try {
    await htmx.ajax("GET", url, { source: drawer, target: drawer, swap: "innerHTML" });
  } catch {
    return; // aborted by a newer request, or offline
  }
  const body = drawer.querySelector(".drawer-body");
  if (body?.dataset.id !== String(id)) return; // refused (not swapped)
  drawer.hidden = false;
  drawer.dataset.id = id;
  if (!keepFocus) body.querySelector("button")?.focus();
}

// The chat panel's `#1234` links open the drawer here, or come here to open it (from another page).
document.addEventListener("bros:open-delivery", (event) => openDrawer(event.detail.id));
try {
  const asked = JSON.parse(sessionStorage.getItem("bros:open-delivery"));
  sessionStorage.removeItem("bros:open-delivery");
  if (asked?.center === config.center) openDrawer(asked.id);
} catch {
  // no storage (private mode) or not JSON: nothing was asked
}

drawer.addEventListener("click", async (event) => {
  const action = event.target.closest("[data-action]")?.dataset.action;
  const body = drawer.querySelector(".drawer-body");
  if (!action || !body) return;
  const row = document.getElementById(`delivery-${body.dataset.id}`);
  if (action === "close-drawer") {
    closeDrawer();
  } else if (action === "assign" && row) {
    openAssign(row);
  } else if (action === "unassign") {
    const result = await command(`/api/v1/deliveries/${body.dataset.id}/unassign`, { version: Number(body.dataset.version) });
    if (!result.ok) alert(refusalText(result));
    openDrawer(body.dataset.id);
  } else if (action === "cancel") {
    const reason = prompt("Why is the order cancelled?");
    if (!reason) return;
    const result = await command(`/api/v1/orders/${body.dataset.order}/cancel`, { reason });
    if (!result.ok) alert(refusalText(result));
    openDrawer(body.dataset.id);
  }
});

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && !drawer.hidden && !dialog.open) closeDrawer();
});

// ---------------------------------------------------------------- row actions and keyboard

rowsEl.addEventListener("click", (event) => {
  const row = event.target.closest(".row[data-id]");
  if (!row) return;
  const action = event.target.closest("[data-action]")?.dataset.action;
  if (action === "assign") openAssign(row);
  else openDrawer(row.dataset.id).then(() => showSelection(row));
});

viewport.addEventListener("keydown", (event) => {
  const rows = [...rowsEl.querySelectorAll(".row[data-id]")];
  if (!rows.length) return;
  const index = rows.indexOf(document.activeElement);
  if (event.key === "ArrowDown" || event.key === "ArrowUp") {
    const next = rows[Math.min(rows.length - 1, Math.max(0, index + (event.key === "ArrowDown" ? 1 : -1)))];
    next.focus();
    next.scrollIntoView({ block: "nearest" });
  } else if (event.key === "Enter" && index >= 0) {
    openDrawer(rows[index].dataset.id);
  } else if (event.key.toLowerCase() === "a" && index >= 0 && rows[index].querySelector("[data-action=assign]")) {
    openAssign(rows[index]);
  } else {
    return;
  }
  event.preventDefault();
});

// ---------------------------------------------------------------- live

const rt = new RealtimeClient({ url: "/ws/v1/", apiBase: "/api/v1" });
window.__board = { rt, riders, loadWindow, scheduleRefresh };
showConnectionState(rt, document.getElementById("conn-state"));

let drawerTimer = null;

function onDeliveryEvent(frame) {
  const data = frame.data;
  const id = String(data.id);
  if ((known.get(id) || 0) < data.version) known.set(id, data.version);
  const row = document.getElementById(`delivery-${id}`);
  if (row && Number(row.dataset.version) < data.version) row.classList.add("stale");
  scheduleRefresh(); // counts, order and membership of the window may all change
  if (!drawer.hidden && drawer.dataset.id === id) {
    clearTimeout(drawerTimer);
    drawerTimer = setTimeout(() => openDrawer(id, { keepFocus: true }), REFRESH_DELAY);
  }
}

rt.addEventListener("state", (event) => {
  // Whatever failed to load while the connection was down is loaded again once it is back.
  if (windowStale && (event.detail.state === "live" || event.detail.state === "resynced")) {
    loadWindow({ force: true });
  }
});

rt.subscribe(config.stream.name, {
  since: config.stream.head,
  epoch: config.stream.epoch,
  onEvent: onDeliveryEvent,
  onReset: () => loadWindow({ force: true }),
  onReconcile: () => loadWindow({ force: true }),
  versionOf: (id) => known.get(String(id)),
});

// The rider filter's options were rendered with the page: keep their names and membership current.
const riderFilter = document.querySelector("select[name=rider]");

function syncRiderOption(rider) {
  let option = riderFilter.querySelector(`option[value="${rider.id}"]`);
  if (option) return setText(option, rider.name);
  option = new Option(rider.name, rider.id);
  const after = [...riderFilter.options].find((o) => Number(o.value) && byName(o.text, rider.name) > 0);
  riderFilter.insertBefore(option, after || null);
}

function forgetRider(id) {
  riders.delete(id);
  riderItems.delete(id);
  markers.get(id)?.remove();
  markers.delete(id);
  const option = riderFilter.querySelector(`option[value="${id}"]`);
  if (option && !option.selected) option.remove(); // a filter in use keeps its rider
}

// A rider unknown so far was just added (in the admin); one whose center is no longer this one moved away.
function applyRider(data) {
  if (data.center !== config.center) return forgetRider(data.id);
  const rider = riders.get(data.id) || { id: data.id, ts: null, lat: null, lng: null };
  if ((rider.version || 0) > data.version) return; // never go back to an older state
  riders.set(data.id, { ...rider, ...data });
  syncRiderOption(data);
}

rt.subscribe(`riders:${config.center}`, {
  snapshot: false,
  onEvent(frame) {
    applyRider(frame.data);
    scheduleRiders(frame.data.id);
  },
  onReset(snapshot) {
    const current = new Set(snapshot.items.map((data) => data.id));
    for (const id of [...riders.keys()]) if (!current.has(id)) forgetRider(id);
    for (const data of snapshot.items) applyRider(data);
    renderRiders();
    drawRiders();
  },
  versionOf: (id) => riders.get(Number(id))?.version,
});

rt.subscribe(`positions:${config.center}`, {
  onEvent(frame) {
    const changed = [];
    for (const fix of frame.data.positions) {
      const rider = riders.get(fix.rider);
      if (!rider) continue;
      const ts = Date.parse(fix.ts);
      if (rider.ts && rider.ts > ts) continue;
      Object.assign(rider, { lat: fix.lat, lng: fix.lng, ts });
      changed.push(fix.rider);
    }
    scheduleRiders(...changed);
  },
});

// What the page was rendered with is the starting point, including which deliveries were late.
updateLateAlert(JSON.parse(rowsEl.querySelector(".window")?.dataset.counts || "{}").late_ids);
tickTimers();
