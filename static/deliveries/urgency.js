// Urgency of a board row, ticked in the browser between refreshes: a copy of the server's rule
// (deliveries/selectors.py, _with_urgency), pinned to it by deliveries/tests/vectors/urgency.json.

export const URGENCY_NONE = 0;
export const URGENCY_UNASSIGNED = 1; // waiting for a rider longer than the SLA
export const URGENCY_NOT_PICKED_UP = 2; // the shop's ready time passed and nobody picked it up
export const URGENCY_LATE = 3; // past the promised time and not delivered

const OPEN = new Set(["waiting", "assigned", "picked_up"]);

export function isOpen(status) {
  return OPEN.has(status);
}

// Times are epoch milliseconds; every threshold is strict, as in the SQL (exactly at it is not past it).
export function urgencyOf({ status, created, ready, promised }, { now, unassignedMinutes }) {
  if (isOpen(status) && now > promised) return URGENCY_LATE;
  if ((status === "waiting" || status === "assigned") && now > ready) return URGENCY_NOT_PICKED_UP;
  if (status === "waiting" && now - created > unassignedMinutes * 60000) return URGENCY_UNASSIGNED;
  return URGENCY_NONE;
}
