// Renders a RealtimeClient's connection state as an honest badge (Live / Reconnecting / Polling / Resynced) in an aria-live region.

const LABELS = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  polling: "Polling",
  resynced: "Resynced",
  closed: "Offline",
};

const HINTS = {
  reconnecting: "Connection lost; retrying. What you see may be out of date.",
  polling: "Connection lost; updates arrive every few seconds over HTTP.",
  resynced: "Reconnected and caught up with everything missed.",
};

/** Show `rt`'s state in `element` (its text, a `data-state` attribute for CSS, a tooltip) and keep it current. */
export function showConnectionState(rt, element) {
  element.setAttribute("role", "status"); // implies aria-live="polite": screen readers hear changes
  element.setAttribute("aria-live", "polite");
  element.classList.add("connection-state");
  const render = (state) => {
    element.dataset.state = state;
    element.textContent = LABELS[state] ?? state;
    element.title = HINTS[state] ?? "";
  };
  render(rt.state);
  const onState = (event) => render(event.detail.state);
  rt.addEventListener("state", onState);
  return () => rt.removeEventListener("state", onState);
}
