// One order, live: re-reads its status and timeline on each of its events, shows the rider on a map with a straight-line ETA, and cancels through the API.
import { RealtimeClient } from "../realtime/client.js";
import { showConnectionState } from "../realtime/status.js";

const config = JSON.parse(document.getElementById("order-config").textContent);
const live = () => document.getElementById("order-live");
const RIDER_POLL_MS = 5000;

// -- live status: any event of this order or its delivery re-reads the live part -----------------

let refreshing = null;
function refreshSoon() {
  if (refreshing) return;
  refreshing = setTimeout(() => {
    refreshing = null;
    htmx.trigger("#order-live", "order-refresh");
  }, 100);
}

const ours = (frame) => {
  const data = frame.data ?? {};
  return frame.event?.startsWith("order.") ? data.id === config.order : data.id === config.delivery;
};

const rt = new RealtimeClient({ url: "/ws/v1/", apiBase: "/api/v1" });
showConnectionState(rt, document.getElementById("conn-state"));
for (const stream of config.streams) {
  rt.subscribe(stream, {
    snapshot: false,
    onEvent: (frame) => ours(frame) && refreshSoon(),
    onReset: refreshSoon,
    onReconcile: refreshSoon,
  });
}

// -- the rider's position and ETA while the order is on its way ------------------------------------

let map = null;
let riderMarker = null;
const eta = document.getElementById("eta");

function ensureMap() {
  if (map) return;
  map = L.map("order-map", { zoomControl: true }).setView(config.drop ?? [config.map.lat, config.map.lng], 14);
  if (config.map.tiles) L.tileLayer(config.map.tiles, { attribution: config.map.attribution, maxZoom: 19 }).addTo(map);
  if (config.drop) L.circleMarker(config.drop, { radius: 8, color: "#6941c6", fillOpacity: 0.9 }).bindTooltip("Drop-off").addTo(map);
}

async function pollRider() {
  if (live()?.dataset.status !== "picked_up") {
    document.getElementById("rider-section").dataset.active = "false";
    eta.textContent = "Shown once the rider has picked up the order.";
    return;
  }
  document.getElementById("rider-section").dataset.active = "true";
  ensureMap();
  try {
    const response = await fetch(config.rider_url, { headers: { Accept: "application/json" } });
    if (!response.ok) return;
    const body = await response.json();
    if (!body.position) {
      eta.textContent = `${body.rider ?? "The rider"} is on the way; no GPS position yet.`;
      return;
    }
    const point = [body.position.lat, body.position.lng];
    if (!riderMarker) riderMarker = L.circleMarker(point, { radius: 7, color: "#067647", fillOpacity: 0.9 }).bindTooltip(body.rider).addTo(map);
    else riderMarker.setLatLng(point);
    map.fitBounds(config.drop ? [point, config.drop] : [point, point], { padding: [30, 30], maxZoom: 16 });
    eta.textContent = body.eta
      ? `${body.rider} is ${body.eta.km.toFixed(1)} km away in a straight line: about ${body.eta.minutes} min.`
      : `${body.rider} is on the way (no drop-off point on the map, so no ETA).`;
  } catch {
    // offline for a moment: the next poll tries again
  }
}

pollRider();
setInterval(pollRider, RIDER_POLL_MS);
document.body.addEventListener("htmx:afterSettle", pollRider);

// -- cancelling ------------------------------------------------------------------------------------

const dialog = document.getElementById("cancel-dialog");
const reason = document.getElementById("cancel-reason");
const error = document.getElementById("cancel-error");
let opener = null;

function csrfToken() {
  return document.cookie.split("; ").find((c) => c.startsWith("csrftoken="))?.split("=")[1] || "";
}

document.addEventListener("click", (event) => {
  if (event.target.closest("#open-cancel")) {
    opener = event.target.closest("#open-cancel");
    const pickedUp = live().dataset.status === "picked_up";
    document.getElementById("cancel-picked-up").hidden = !pickedUp;
    document.getElementById("cancel-rider-name").textContent = live().dataset.riderName;
    const phone = live().dataset.riderPhone;
    document.getElementById("cancel-rider-phone").textContent = phone ? ` at ${phone}` : "";
    error.textContent = "";
    reason.removeAttribute("aria-invalid");
    dialog.showModal();
    reason.focus();
  } else if (event.target.closest("#keep-order")) {
    dialog.close();
  }
});

dialog.addEventListener("close", () => (document.getElementById("open-cancel") ?? document.getElementById("order-title")).focus());

let cancelKey = null;
document.getElementById("cancel-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = reason.value.trim();
  if (!text) {
    error.textContent = "Say why the order is cancelled.";
    reason.setAttribute("aria-invalid", "true");
    reason.focus();
    return;
  }
  cancelKey ??= crypto.randomUUID(); // one key for this dialog's attempts: a double click cancels once
  const button = document.getElementById("confirm-cancel");
  button.disabled = true;
  try {
    const response = await fetch(config.cancel_url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken(), "Idempotency-Key": cancelKey },
      body: JSON.stringify({ reason: text }),
    });
    if (response.ok) {
      dialog.close();
      refreshSoon();
      return;
    }
    cancelKey = null;
    const body = await response.json().catch(() => ({}));
    const detail = body.detail;
    error.textContent = Array.isArray(detail) ? detail.map((d) => d.msg).join(" ") : detail || `Not cancelled (HTTP ${response.status}).`;
    reason.setAttribute("aria-invalid", "true");
    reason.focus();
  } catch {
    cancelKey = null;
    error.textContent = "No connection: the order is not cancelled yet. Try again.";
  } finally {
    button.disabled = false;
  }
});
