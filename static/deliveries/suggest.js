// Ranks riders for the assign dialog in the browser, with the weights of riders/suggestions.py.

const EARTH_KM = 6371.0088;

export function haversineKm(lat1, lng1, lat2, lng2) {
  const rad = Math.PI / 180;
  const dLat = (lat2 - lat1) * rad;
  const dLng = (lng2 - lng1) * rad;
  const a = Math.sin(dLat / 2) ** 2 + Math.cos(lat1 * rad) * Math.cos(lat2 * rad) * Math.sin(dLng / 2) ** 2;
  return 2 * EARTH_KM * Math.asin(Math.sqrt(a));
}

function gpsText(ageS, stale, ts) {
  if (ts == null) return "GPS time unknown";
  if (stale) return `last seen ${new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}`;
  if (ageS < 60) return `GPS ${Math.floor(ageS)} s ago`;
  if (ageS < 3600) return `GPS ${Math.floor(ageS / 60)} min ago`;
  return `GPS ${Math.floor(ageS / 3600)} h ago`;
}

// Return on-duty riders best first as {rider, distanceKm, stale, score, reason}; `weights` comes
// from the page config (suggestions.scoring_params()), so browser and server rank alike.
export function rankRiders(riders, { lat, lng, now, weights }) {
  const ranked = [];
  for (const rider of riders) {
    if (rider.status === "offline") continue;
    const hasPosition = rider.lat != null && rider.lng != null;
    const distanceKm = hasPosition ? haversineKm(rider.lat, rider.lng, lat, lng) : null;
    const ageS = rider.ts != null ? Math.max(0, (now - rider.ts) / 1000) : null;
    const stale = ageS == null || ageS > weights.gps_stale_seconds;
    const penalty = weights.load_penalty_km * rider.load;
    const score = distanceKm == null ? weights.no_position_tier_km + penalty : (stale ? weights.stale_tier_km : 0) + distanceKm + penalty;
    const distance = distanceKm == null ? "no GPS" : distanceKm < weights.near_km ? `< ${weights.near_km.toFixed(1)} km` : `${distanceKm.toFixed(1)} km`;
    const parts = [distance, rider.load ? `${rider.load} active` : "idle"];
    if (distanceKm != null) parts.push(gpsText(ageS, stale, rider.ts));
    ranked.push({ rider, distanceKm, stale, score, reason: parts.join(" · ") });
  }
  return ranked.sort((a, b) => a.score - b.score || a.rider.name.localeCompare(b.rider.name) || a.rider.id - b.rider.id);
}
