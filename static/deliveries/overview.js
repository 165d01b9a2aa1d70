// HQ overview: every center's counts; htmx reloads the cards (#cards) whenever one of their streams moves.
import { RealtimeClient } from "../realtime/client.js";
import { showConnectionState } from "../realtime/status.js";

const streams = JSON.parse(document.getElementById("overview-streams").textContent);
let timer = null;

function refreshSoon() {
  if (timer) return; // one refresh per burst, at most every 500 ms
  timer = setTimeout(() => {
    timer = null;
    htmx.trigger("#cards", "overview-refresh"); // by id: each swap puts a new #cards in place
  }, 500);
}

const rt = new RealtimeClient({ url: "/ws/v1/", apiBase: "/api/v1" });
showConnectionState(rt, document.getElementById("conn-state"));
for (const stream of streams) {
  rt.subscribe(stream, { snapshot: false, onEvent: refreshSoon, onReset: refreshSoon, onReconcile: refreshSoon });
}
