// The shift replay page: a scrubber and play (1×/10×/60×) that fetch the board at a moment, the riders' map, and a delivery's timeline.
const config = JSON.parse(document.getElementById("replay-config").textContent);
const base = location.pathname; // /dispatch/<center>/replay/
const spanStart = Date.parse(config.span_start);
const player = document.getElementById("replay-player");
const scrubber = document.getElementById("replay-scrubber");
const playButton = document.getElementById("replay-play");
const loading = document.getElementById("replay-loading");
const errorBox = document.getElementById("replay-error");
const dateInput = document.getElementById("replay-date");
const timeInput = document.getElementById("replay-time");
const timeline = document.getElementById("replay-timeline");
const TICK_MS = 250;

let selected = null; // the delivery whose timeline is open, followed as the moment moves
let inFlight = false;
let wanted = null; // the latest moment asked for while a request was running: fetched next
let playing = null;

// Moments are written in the deployment's time zone (as the server writes them), whatever the browser's.
const zoned = new Intl.DateTimeFormat("en-CA", {
  timeZone: config.time_zone,
  year: "numeric",
  month: "2-digit",
  day: "2-digit",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hourCycle: "h23",
});

function localParts(date) {
  const p = Object.fromEntries(zoned.formatToParts(date).map((part) => [part.type, part.value]));
  return { day: `${p.year}-${p.month}-${p.day}`, time: `${p.hour}:${p.minute}:${p.second}` };
}

function momentAt(offsetSeconds) {
  return new Date(spanStart + offsetSeconds * 1000);
}

// The moment as the server reads it: UTC, to the second (the fragment clamps a future one to now).
function isoOf(date) {
  return date.toISOString().replace(/\.\d{3}Z$/, "Z");
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

async function load(offsetSeconds) {
  if (inFlight) {
    wanted = offsetSeconds;
    return;
  }
  inFlight = true;
  loading.textContent = "Loading…";
  const t = isoOf(momentAt(offsetSeconds));
  try {
    await htmx.ajax("GET", `${base}at/?t=${encodeURIComponent(t)}`, { target: "#replay-at", swap: "outerHTML" });
    if (selected) await openTimeline(selected, t);
  } finally {
    inFlight = false;
    loading.textContent = "";
  }
  if (wanted !== null) {
    const next = wanted;
    wanted = null;
    load(next);
  }
}

function openTimeline(deliveryId, t) {
  return htmx.ajax("GET", `${base}deliveries/${deliveryId}/?t=${encodeURIComponent(t)}`, {
    target: "#replay-timeline",
    swap: "innerHTML",
  });
}

// A refused moment (400) comes with its reason: show it where errors go instead of dropping it.
document.body.addEventListener("htmx:beforeSwap", (event) => {
  const status = event.detail.xhr.status;
  if (status === 400) {
    event.detail.shouldSwap = false;
    const reason = new DOMParser().parseFromString(event.detail.xhr.responseText, "text/html").getElementById("replay-error");
    showError(reason ? reason.textContent : "That moment cannot be replayed.");
  } else if (status === 404 && event.detail.target === timeline) {
    event.detail.shouldSwap = false;
    selected = null;
    showError("That order did not exist yet at this moment.");
  } else if (status >= 400) {
    showError("The replay could not be loaded. Try again.");
  }
});

document.body.addEventListener("htmx:afterSwap", (event) => {
  if (event.detail.target.id === "replay-at" || event.detail.elt?.id === "replay-at") {
    showError("");
    const moment = document.getElementById("replay-at");
    scrubber.setAttribute("aria-valuetext", localParts(new Date(moment.dataset.at)).time);
    drawRiders();
  }
});

// Links to a delivery's timeline: fetched beside the board instead of reloading the page.
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-delivery]");
  if (!link || event.ctrlKey || event.metaKey || event.shiftKey) return;
  event.preventDefault();
  selected = link.dataset.delivery;
  const t = document.getElementById("replay-at").dataset.at;
  openTimeline(selected, t).then(() => timeline.focus());
});

// The day and time fields follow the scrubber, so "Show" (or a reload) keeps the moment.
function showMoment(offsetSeconds) {
  const { day, time } = localParts(momentAt(offsetSeconds));
  dateInput.value = day;
  timeInput.value = time;
}

scrubber.addEventListener("input", () => {
  showMoment(Number(scrubber.value));
  load(Number(scrubber.value));
});

function speed() {
  return Number(document.querySelector("input[name=speed]:checked").value);
}

function stop() {
  clearInterval(playing);
  playing = null;
  playButton.textContent = "Play";
  playButton.setAttribute("aria-pressed", "false");
}

playButton.addEventListener("click", () => {
  if (playing) return stop();
  if (Number(scrubber.value) >= Number(scrubber.max)) scrubber.value = 0; // played to the end: from the start
  playButton.textContent = "Pause";
  playButton.setAttribute("aria-pressed", "true");
  let position = Number(scrubber.value);
  playing = setInterval(() => {
    position = Math.min(position + (speed() * TICK_MS) / 1000, Number(scrubber.max));
    if (Math.floor(position) !== Number(scrubber.value)) {
      // At 1× a second takes four ticks: ask for each second once.
      scrubber.value = Math.floor(position);
      showMoment(Number(scrubber.value));
      load(Number(scrubber.value));
    }
    if (position >= Number(scrubber.max)) stop();
  }, TICK_MS);
});

let map = null;
const markers = new Map();

function initMap() {
  if (!window.L) return;
  map = L.map("replay-map", { preferCanvas: true }).setView([config.map.lat, config.map.lng], 13);
  if (config.map.tiles) L.tileLayer(config.map.tiles, { attribution: config.map.attribution, maxZoom: 19 }).addTo(map);
  drawRiders();
}

function drawRiders() {
  if (!map) return;
  const positions = JSON.parse(document.getElementById("replay-positions").textContent);
  const seen = new Set();
  for (const rider of positions) {
    seen.add(rider.id);
    const color = rider.stale ? "#667085" : "#0b6bcb";
    let marker = markers.get(rider.id);
    if (!marker) {
      marker = L.circleMarker([rider.lat, rider.lng], { radius: 6, weight: 1 }).bindTooltip(rider.name).addTo(map);
      markers.set(rider.id, marker);
    } else {
      marker.setLatLng([rider.lat, rider.lng]);
    }
    marker.setStyle({ color, fillColor: color, fillOpacity: 0.85 });
  }
  for (const [id, marker] of markers) {
    if (!seen.has(id)) {
      marker.remove();
      markers.delete(id);
    }
  }
}

player.hidden = false;
initMap();
