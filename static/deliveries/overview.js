// HQ overview: every center's counts, refreshed from the server whenever one of their streams moves.
import { RealtimeClient } from "../realtime/client.js";
import { showConnectionState } from "../realtime/status.js";

const streams = JSON.parse(document.getElementById("overview-streams").textContent);
let timer = null;

function refreshSoon() {
  if (timer) return; // one refresh per burst, at most every 500 ms
  timer = setTimeout(async () => {
    timer = null;
    const response = await fetch("/dispatch/overview/cards/", { credentials: "same-origin" });
    if (response.ok) document.getElementById("cards").outerHTML = await response.text();
  }, 500);
}

const rt = new RealtimeClient({ url: "/ws/v1/", apiBase: "/api/v1" });
showConnectionState(rt, document.getElementById("conn-state"));
for (const stream of streams) {
  rt.subscribe(stream, { snapshot: false, onEvent: refreshSoon, onReset: refreshSoon, onReconcile: refreshSoon });
}
setInterval(refreshSoon, 30000); // stale-GPS counts change with time alone
