// Ranks riders for the assign dialog in the browser: a copy of riders/suggestions.py (the source of
// truth), pinned to it by riders/tests/vectors/ranking.json.

const EARTH_KM = 6371.0088;

// The same operations in the same order as haversine_km, so both round alike.
export function haversineKm(lat1, lng1, lat2, lng2) {
  const rad = Math.PI / 180;
  const phi1 = lat1 * rad;
  const phi2 = lat2 * rad;
  const dPhi = phi2 - phi1;
  const dLambda = (lng2 - lng1) * rad;
  const a = Math.sin(dPhi / 2) ** 2 + Math.cos(phi1) * Math.cos(phi2) * Math.sin(dLambda / 2) ** 2;
  return 2 * EARTH_KM * Math.asin(Math.min(1, Math.sqrt(a)));
}

// One decimal as Python's format writes it: an exact tie (n + 0.25 is one; 0.35 is not, its double
// is below the half) goes to the even digit, where toFixed would round it up.
function oneDecimal(x) {
  const quarters = x * 4; // exact: a power of two
  return (Number.isInteger(quarters) && quarters % 4 === 1 ? x - 0.05 : x).toFixed(1);
}

function distanceText(distanceKm, nearKm) {
  if (distanceKm == null) return "no GPS";
  return distanceKm < nearKm ? `< ${oneDecimal(nearKm)} km` : `${oneDecimal(distanceKm)} km`;
}

const clocks = new Map(); // time zone -> formatter: building one costs more than formatting with it
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]; // Python's %b

// "12:04" and "20 Nov" in the deployment's time zone, whatever the browser's zone and locale.
function localParts(ms, timeZone) {
  let clock = clocks.get(timeZone);
  if (!clock) {
    const fields = { year: "numeric", month: "numeric", day: "numeric", hour: "2-digit", minute: "2-digit" };
    clock = new Intl.DateTimeFormat("en-GB", { timeZone, ...fields, hourCycle: "h23" });
    clocks.set(timeZone, clock);
  }
  const parts = Object.fromEntries(clock.formatToParts(ms).map((part) => [part.type, part.value]));
  return {
    day: `${parts.year}-${parts.month}-${parts.day}`,
    date: `${Number(parts.day)} ${MONTHS[Number(parts.month) - 1]}`,
    time: `${parts.hour}:${parts.minute}`,
  };
}

let today = { now: null, timeZone: null, day: null }; // one ranking asks for the same day once per stale rider

function dayOf(now, timeZone) {
  if (today.now !== now || today.timeZone !== timeZone) today = { now, timeZone, day: localParts(now, timeZone).day };
  return today.day;
}

function gpsText({ ageS, stale, ts }, { now, timeZone }) {
  if (ts == null || ageS == null) return "GPS time unknown";
  if (stale) {
    const seen = localParts(ts, timeZone);
    return seen.day === dayOf(now, timeZone) ? `last seen ${seen.time}` : `last seen ${seen.date} ${seen.time}`;
  }
  if (ageS < 60) return `GPS ${Math.floor(ageS)} s ago`;
  if (ageS < 3600) return `GPS ${Math.floor(ageS / 60)} min ago`;
  return `GPS ${Math.floor(ageS / 3600)} h ago`;
}

// The reason line of a candidate, e.g. "1.2 km · 2 active · GPS 4 s ago" (ts and now in epoch ms).
export function formatReason({ distanceKm, load, ageS, stale, ts }, { now, weights }) {
  const parts = [distanceText(distanceKm, weights.near_km), load ? `${load} active` : "idle"];
  // "no GPS" already says everything about the position.
  if (distanceKm != null) parts.push(gpsText({ ageS, stale, ts }, { now, timeZone: weights.time_zone }));
  return parts.join(" · ");
}

// Names compare by code point, as the server's sort does (localeCompare would order "Émile" before "kim").
function byCodePoint(a, b) {
  return a < b ? -1 : a > b ? 1 : 0;
}

// Return on-duty riders best first as {rider, distanceKm, stale, score, reason}; `weights` comes
// from the page config (suggestions.scoring_params()), so browser and server rank alike.
export function rankRiders(riders, { lat, lng, now, weights }) {
  const ranked = [];
  for (const rider of riders) {
    if (rider.status === "offline") continue;
    const hasPosition = rider.lat != null && rider.lng != null;
    const distanceKm = hasPosition ? haversineKm(rider.lat, rider.lng, lat, lng) : null;
    const ts = hasPosition ? rider.ts : null;
    const ageS = ts != null ? Math.max(0, (now - ts) / 1000) : null;
    const stale = ageS == null || ageS > weights.gps_stale_seconds;
    const penalty = weights.load_penalty_km * rider.load;
    const score = distanceKm == null ? weights.no_position_tier_km + penalty : (stale ? weights.stale_tier_km : 0) + distanceKm + penalty;
    const reason = formatReason({ distanceKm, load: rider.load, ageS, stale, ts }, { now, weights });
    ranked.push({ rider, distanceKm, stale, score, reason });
  }
  return ranked.sort((a, b) => a.score - b.score || byCodePoint(a.rider.name, b.rider.name) || a.rider.id - b.rider.id);
}
