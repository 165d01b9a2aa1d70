// Call-center intake and today's orders: the map pin, item rows, customer suggestions, shortcuts, and live list refreshes.
import { RealtimeClient } from "../realtime/client.js";
import { showConnectionState } from "../realtime/status.js";

const config = JSON.parse(document.getElementById("orders-config").textContent);
const form = () => document.getElementById("intake");
const field = (name) => form().querySelector(`[name=${name}]`);

// -- the map: one pin for the drop-off point, kept in step with the lat/lng fields ----------------

const map = L.map("intake-map", { zoomControl: true }).setView([config.map.lat, config.map.lng], 13);
if (config.map.tiles) L.tileLayer(config.map.tiles, { attribution: config.map.attribution, maxZoom: 19 }).addTo(map);
let pin = null;
let area = null;

function showArea(code) {
  const center = config.centers[code];
  if (area) area.remove();
  area = null;
  if (!center) return;
  area = L.circle([center.lat, center.lng], { radius: config.service_radius_km * 1000, weight: 1, fill: false, dashArray: "4" }).addTo(map);
  if (!pin) map.setView([center.lat, center.lng], 12);
}

function placePin(lat, lng, { pan = true } = {}) {
  if (!Number.isFinite(lat) || !Number.isFinite(lng) || Math.abs(lat) > 90 || Math.abs(lng) > 180) return;
  if (!pin) {
    pin = L.marker([lat, lng], { draggable: true, keyboard: false, title: "Drop-off point" }).addTo(map);
    pin.on("dragend", () => writePoint(pin.getLatLng()));
  } else {
    pin.setLatLng([lat, lng]);
  }
  if (pan) map.panTo([lat, lng]);
}

function writePoint({ lat, lng }) {
  field("lat").value = lat.toFixed(6);
  field("lng").value = lng.toFixed(6);
}

function pinFromFields() {
  const lat = parseFloat(field("lat").value);
  const lng = parseFloat(field("lng").value);
  if (Number.isFinite(lat) && Number.isFinite(lng)) placePin(lat, lng);
  else if (pin) {
    pin.remove();
    pin = null;
  }
}

map.on("click", (event) => {
  writePoint(event.latlng);
  placePin(event.latlng.lat, event.latlng.lng, { pan: false });
});

// -- the form: item rows, customer suggestions, shop → area, reset after a taken order --------------

function addItemRow() {
  const rows = form().querySelector("#item-rows");
  const row = rows.querySelector(".item-row").cloneNode(true);
  row.querySelector("[name=item_name]").value = "";
  row.querySelector("[name=item_qty]").value = "1";
  rows.append(row);
  row.querySelector("[name=item_name]").focus();
}

document.addEventListener("click", (event) => {
  const target = event.target.closest("button");
  if (!target || !form()?.contains(target)) return;
  if (target.id === "add-item") addItemRow();
  else if (target.classList.contains("remove-item")) {
    const rows = form().querySelectorAll(".item-row");
    const row = target.closest(".item-row");
    if (rows.length > 1) {
      const next = row.nextElementSibling ?? row.previousElementSibling;
      row.remove();
      next.querySelector("[name=item_name]").focus();
    } else {
      row.querySelector("[name=item_name]").value = "";
      row.querySelector("[name=item_qty]").value = "1";
      row.querySelector("[name=item_name]").focus();
    }
  } else if (target.classList.contains("use-customer")) {
    field("customer_name").value = target.dataset.name;
    field("address").value = target.dataset.address;
    field("lat").value = target.dataset.lat;
    field("lng").value = target.dataset.lng;
    pinFromFields();
    document.getElementById("customers").replaceChildren();
    field("shop").focus();
  } else if (target.id === "clear-form") {
    event.preventDefault();
    clearForm();
  }
});

function clearForm() {
  for (const name of ["customer_phone", "customer_name", "address", "lat", "lng", "note"]) field(name).value = "";
  const rows = form().querySelectorAll(".item-row");
  rows.forEach((row, i) => (i ? row.remove() : null));
  rows[0].querySelector("[name=item_name]").value = "";
  rows[0].querySelector("[name=item_qty]").value = "1";
  document.getElementById("customers").replaceChildren();
  pinFromFields();
  field("customer_phone").focus();
}

document.addEventListener("change", (event) => {
  if (event.target.name === "lat" || event.target.name === "lng") pinFromFields();
  if (event.target.name === "shop") showArea(event.target.selectedOptions[0]?.dataset.center);
});

function formReady() {
  pinFromFields();
  showArea(field("shop").selectedOptions[0]?.dataset.center);
  const invalid = form().querySelector("[aria-invalid=true], #id_confirm_duplicate");
  if (invalid) invalid.focus();
  else if (document.getElementById("taken") || document.activeElement === document.body) field("customer_phone").focus();
}

document.body.addEventListener("htmx:afterSettle", (event) => {
  if (event.detail.requestConfig?.verb === "post") formReady(); // the form came back: taken, or refused
});
formReady();

// -- shortcuts --------------------------------------------------------------------------------------

document.addEventListener("keydown", (event) => {
  if (event.altKey && !event.ctrlKey && !event.metaKey) {
    const key = event.key.toLowerCase();
    if (key === "p") field("customer_phone").focus();
    else if (key === "i") addItemRow();
    else if (key === "c") clearForm();
    else return;
    event.preventDefault();
  } else if (event.key === "/" && !event.target.closest("input, textarea, select")) {
    event.preventDefault();
    document.getElementById("order-search").focus();
  }
});

// -- today's orders, live ---------------------------------------------------------------------------

let timer = null;
function refreshSoon() {
  if (timer) return; // one refresh per burst, at most every 500 ms: a busy center sends many events
  timer = setTimeout(() => {
    timer = null;
    htmx.trigger("#order-list", "orders-refresh");
  }, 500);
}

const rt = new RealtimeClient({ url: "/ws/v1/", apiBase: "/api/v1" });
showConnectionState(rt, document.getElementById("conn-state"));
for (const stream of config.streams) {
  rt.subscribe(stream, { snapshot: false, onEvent: refreshSoon, onReset: refreshSoon, onReconcile: refreshSoon });
}
