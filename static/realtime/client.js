// The one real-time client of BROS: a WebSocket to /ws/v1/ that keeps every subscribed stream exact and current by following the client rules of protocol.md §3.
//
// Page scripts stay short:
//   const rt = new RealtimeClient();
//   const sub = rt.subscribe("deliveries:gangnam", {onReset, onEvent, onReconcile, versionOf});
//   rt.addEventListener("state", (e) => badge.textContent = e.detail.state);
//
// For a logged stream the client calls `onEvent(frame)` once per seq, in order, with no gap and no
// duplicate, whatever happens to the socket: gaps are filled over HTTP, a lost socket is resumed
// with `since` (and polled over HTTP meanwhile), and a stream whose history cannot be resumed is
// reloaded from its snapshot (`onReset`). Frames of ephemeral streams (`positions:*`) are passed
// through as they come.

const EPHEMERAL_NAMESPACES = new Set(["positions"]);
const EVENTS_PAGE = 500;
const FATAL_HTTP = new Set([400, 401, 403, 404]); // retrying cannot help

/** Whether `entity` is newer than the version a page shows (`shownVersion` undefined: not shown). */
export function isNewer(entity, shownVersion) {
  return shownVersion == null || (entity != null && entity.version > shownVersion);
}

/** Whether `entity` is older than what the page shows: such data must never replace it (protocol §3). */
function isStale(entity, shownVersion) {
  return shownVersion != null && typeof entity?.version === "number" && entity.version < shownVersion;
}

class HttpError extends Error {
  constructor(status, url) {
    super(`HTTP ${status} for ${url}`);
    this.status = status;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** One stream the page follows; returned by `RealtimeClient.subscribe`. */
class Subscription {
  constructor(client, stream, options) {
    this.client = client;
    this.stream = stream;
    this.ephemeral = EPHEMERAL_NAMESPACES.has(stream.split(":")[0]);
    this.onEvent = options.onEvent ?? (() => {});
    this.onReset = options.onReset ?? (() => {});
    this.onReconcile = options.onReconcile ?? (() => {});
    this.versionOf = options.versionOf ?? (() => undefined);
    this.epoch = null;
    this.last = null; // last applied seq; null until the starting point is known
    this.ready = false; // may be subscribed on the socket (its starting point is loaded)
    this.resuming = false; // the last subscribe carried `since`
    this.confirmed = false; // the current socket answered `subscribed` (and any `reset` is handled)
    this.failed = false;
    this.closed = false;
    this.polling = false;
    this.retry = null;
    // Every frame and HTTP page of this stream is handled in one chain, so a live event that
    // arrives while a gap is being fetched waits for the fill instead of overtaking it.
    this.chain = Promise.resolve();
  }

  /** Stop following the stream. */
  close() {
    this.client._unsubscribe(this);
  }
}

export class RealtimeClient extends EventTarget {
  /**
   * @param {object} [options]
   * @param {string} [options.url] WebSocket path or URL ("/ws/v1/").
   * @param {string} [options.apiBase] HTTP API prefix ("/api/v1").
   * @param {number} [options.pollInterval] ms between HTTP polls while the socket is down.
   * @param {number} [options.silenceTimeout] ms of server silence before we ping it ourselves.
   * @param {number} [options.pingTimeout] ms to wait for any answer to that ping before dropping the socket.
   * @param {number} [options.resyncedFor] ms the state stays "resynced" after a resume.
   */
  constructor({
    url = "/ws/v1/",
    apiBase = "/api/v1",
    pollInterval = 3000,
    silenceTimeout = 25000,
    pingTimeout = 10000,
    resyncedFor = 2000,
  } = {}) {
    super();
    const wsUrl = new URL(url, location.href);
    wsUrl.protocol = wsUrl.protocol === "https:" ? "wss:" : "ws:";
    this.url = wsUrl.href;
    this.apiBase = apiBase.replace(/\/$/, "");
    this.pollInterval = pollInterval;
    this.silenceTimeout = silenceTimeout;
    this.pingTimeout = pingTimeout;
    this.resyncedFor = resyncedFor;
    this.state = "connecting";
    this._subs = new Map();
    this._pending = new Map(); // publish id -> {resolve, reject}
    this._ids = 0;
    this._ws = null;
    this._attempt = 0;
    this._wasDown = false;
    this._liveOnThisSocket = false;
    this._closed = false;
    this._timers = {};
    this._onOnline = () => this._connectNow();
    globalThis.addEventListener("online", this._onOnline);
    this._connect();
  }

  // -- public API ---------------------------------------------------------------------------

  /**
   * Follow `stream`. Options: onEvent(frame), onReset(snapshot, reason), onReconcile(frame, staleIds),
   * versionOf(id: string) -> version shown or undefined; `snapshot` (default true) loads the
   * stream's state first; or `since` + `epoch` resume from state the server rendered into the page.
   */
  subscribe(stream, { snapshot = true, since, epoch, ...handlers } = {}) {
    if (this._subs.has(stream)) throw new Error(`Already subscribed to ${stream}`);
    const sub = new Subscription(this, stream, handlers);
    sub.id = `s${++this._ids}`;
    this._subs.set(stream, sub);
    if (since != null && !sub.ephemeral) {
      Object.assign(sub, { last: since, epoch, ready: true });
    } else if (!snapshot || sub.ephemeral) {
      sub.ready = true; // starts from the head that `subscribed` reports
    } else {
      // Snapshot first, then subscribe from its head: nothing committed in between is missed.
      this._run(sub, async () => {
        await this._reload(sub, "initial");
        sub.ready = !sub.failed;
        if (sub.ready) this._sendSubscribe(sub);
      });
    }
    if (sub.ready) this._sendSubscribe(sub);
    return sub;
  }

  /** Publish an event (e.g. `chat.message`); resolves with the server's `ack` frame. */
  publish(stream, event, data) {
    const id = `p${++this._ids}`;
    return new Promise((resolve, reject) => {
      if (!this._send({ type: "publish", id, stream, event, data })) {
        reject(new Error("not connected"));
        return;
      }
      this._pending.set(id, { resolve, reject });
    });
  }

  /** Send a rider's GPS fix; false when the socket is down (the caller buffers and POSTs later). */
  sendPosition(fix) {
    return this._send({ type: "position", ...fix });
  }

  /** Drop the socket and resume as after any network loss. */
  reconnect() {
    if (this._ws) this._lost(this._ws);
    else this._connectNow();
  }

  /** Stop everything: socket, timers, polling. */
  close() {
    this._closed = true;
    globalThis.removeEventListener("online", this._onOnline);
    for (const sub of this._subs.values()) sub.closed = true;
    this._subs.clear();
    for (const name of Object.keys(this._timers)) this._clearTimer(name);
    const ws = this._ws;
    this._ws = null;
    if (ws) ws.close(1000);
    this._setState("closed");
  }

  // -- the socket ---------------------------------------------------------------------------

  _connect() {
    if (this._closed) return;
    const ws = new WebSocket(this.url);
    this._ws = ws;
    this._liveOnThisSocket = false;
    ws.onopen = () => this._onOpen(ws);
    ws.onmessage = (message) => this._onMessage(ws, message);
    ws.onclose = () => this._lost(ws);
  }

  _connectNow() {
    if (this._ws || this._closed) return;
    this._clearTimer("reconnect");
    this._connect();
  }

  _onOpen(ws) {
    if (ws !== this._ws) return;
    this._heardAt = Date.now();
    this._pingSentAt = null;
    // Browsers can keep a dead TCP connection "open" for minutes: watch for silence ourselves.
    this._timers.heartbeat = setInterval(() => this._checkSilence(ws), Math.min(5000, this.silenceTimeout));
    for (const sub of this._subs.values()) if (sub.ready && !sub.failed) this._sendSubscribe(sub);
    this._maybeLive();
  }

  /** The socket is gone (closed by either side, 4001 too slow, 4002 idle, network): resume later. */
  _lost(ws) {
    if (ws !== this._ws) return;
    this._ws = null;
    ws.onopen = ws.onmessage = ws.onclose = null;
    if (ws.readyState <= WebSocket.OPEN) ws.close();
    this._clearTimer("heartbeat");
    this._clearTimer("resynced");
    for (const sub of this._subs.values()) sub.confirmed = false;
    for (const { reject } of this._pending.values()) reject(new Error("connection lost"));
    this._pending.clear();
    if (this._closed) return;
    this._wasDown = true;
    if (this.state !== "polling") this._setState("reconnecting"); // a failed retry while polling works changes nothing
    this._startPolling();
    // Exponential back-off with jitter (0.5 s doubling to 30 s), so a restarted server is not
    // hit by every browser at the same instant.
    const delay = Math.min(30000, 500 * 2 ** this._attempt++);
    this._timers.reconnect = setTimeout(() => {
      delete this._timers.reconnect;
      this._connect();
    }, delay / 2 + (Math.random() * delay) / 2);
  }

  _checkSilence(ws) {
    if (ws !== this._ws) return;
    const now = Date.now();
    if (this._pingSentAt != null && now - this._pingSentAt > this.pingTimeout) {
      this._lost(ws); // no answer at all: the socket is dead even if the browser thinks otherwise
    } else if (this._pingSentAt == null && now - this._heardAt > this.silenceTimeout) {
      this._pingSentAt = now;
      this._send({ type: "ping", id: `k${++this._ids}` });
    }
  }

  _send(frame) {
    if (!this._ws || this._ws.readyState !== WebSocket.OPEN) return false;
    this._ws.send(JSON.stringify(frame));
    return true;
  }

  _sendSubscribe(sub) {
    const frame = { type: "subscribe", id: sub.id, stream: sub.stream };
    sub.confirmed = false;
    sub.resuming = !sub.ephemeral && sub.last != null;
    if (sub.resuming) Object.assign(frame, { since: sub.last, epoch: sub.epoch });
    this._send(frame);
  }

  _unsubscribe(sub) {
    if (sub.closed) return;
    sub.closed = true;
    clearTimeout(sub.retry);
    this._subs.delete(sub.stream);
    this._send({ type: "unsubscribe", id: `u${++this._ids}`, stream: sub.stream });
    this._maybeLive();
  }

  _onMessage(ws, message) {
    if (ws !== this._ws) return; // a late frame of a socket we already gave up on
    this._heardAt = Date.now();
    this._pingSentAt = null;
    let frame;
    try {
      frame = JSON.parse(message.data);
    } catch {
      return;
    }
    const sub = this._subs.get(frame.stream);
    switch (frame.type) {
      case "ping":
        this._send({ type: "pong" });
        // The heads catch the loss of the last event of a burst, which no later event reveals.
        for (const [stream, head] of Object.entries(frame.heads ?? {})) {
          const behind = this._subs.get(stream);
          if (behind && !behind.ephemeral) this._run(behind, () => this._catchUp(behind, head));
        }
        break;
      case "ack":
      case "error":
        this._settle(frame);
        break;
      case "subscribed":
      case "event":
      case "reset":
      case "reconcile":
        if (sub) this._run(sub, () => this._handle(sub, frame));
        break;
      default: // pong, unsubscribed: nothing to do beyond having heard the server
    }
  }

  _settle(frame) {
    const pending = this._pending.get(frame.id);
    if (pending) {
      this._pending.delete(frame.id);
      if (frame.type === "ack") pending.resolve(frame);
      else pending.reject(Object.assign(new Error(frame.message), { code: frame.code }));
      return;
    }
    const sub = [...this._subs.values()].find((s) => s.id === frame.id);
    if (sub && frame.type === "error") this._fail(sub, frame.code, frame.message);
  }

  _fail(sub, code, message) {
    sub.failed = true; // forbidden or unknown: asking again cannot help
    this._emit("error", { stream: sub.stream, code, message });
    this._maybeLive();
  }

  // -- one stream's frames, in its chain ------------------------------------------------------

  _run(sub, work) {
    sub.chain = sub.chain
      .then(() => (sub.closed ? undefined : work()))
      .catch((error) => console.error(`realtime: ${sub.stream}`, error));
    return sub.chain;
  }

  async _handle(sub, frame) {
    if (sub.ephemeral) {
      if (frame.type === "subscribed") this._confirm(sub);
      else if (frame.type === "event") this._call(sub.onEvent, frame);
      return;
    }
    switch (frame.type) {
      case "subscribed":
        if (!sub.resuming) Object.assign(sub, { epoch: frame.epoch, last: frame.head });
        // A refused resume (`recovered: false` after `since`) is followed by `reset`, handled there.
        if (!sub.resuming || frame.recovered) this._confirm(sub);
        break;
      case "event":
        await this._receive(sub, frame);
        break;
      case "reset":
        await this._reload(sub, frame.reason ?? "reset");
        this._confirm(sub);
        break;
      case "reconcile":
        await this._reconcile(sub, frame);
        break;
    }
  }

  _confirm(sub) {
    sub.confirmed = true;
    this._maybeLive();
  }

  async _receive(sub, frame) {
    if (sub.last == null || frame.seq <= sub.last) return; // a duplicate
    if (frame.seq > sub.last + 1) {
      const filled = await this._catchUp(sub, frame.seq - 1);
      if (frame.seq <= sub.last) return; // the fill already brought it
      if (!filled || frame.seq > sub.last + 1) {
        // Applying it now would leave a hole: drop it and fetch the range again shortly.
        this._retryCatchUp(sub, frame.seq);
        return;
      }
    }
    this._apply(sub, frame);
  }

  _apply(sub, frame) {
    sub.last = frame.seq;
    const entity = frame.data;
    if (entity?.id != null && isStale(entity, sub.versionOf(String(entity.id)))) return;
    this._call(sub.onEvent, frame);
  }

  /** Fetch and apply the events after `sub.last` up to `upto` (or the head); false if HTTP failed. */
  async _catchUp(sub, upto = Infinity) {
    while (sub.last != null && sub.last < upto && !sub.closed) {
      const query = `since=${sub.last}&epoch=${encodeURIComponent(sub.epoch ?? "")}&limit=${EVENTS_PAGE}`;
      let page;
      try {
        page = await this._get(`/streams/${encodeURIComponent(sub.stream)}/events?${query}`);
      } catch (error) {
        if (error instanceof HttpError && FATAL_HTTP.has(error.status)) this._fail(sub, "http", error.message);
        return false;
      }
      if (page.reset) {
        await this._reload(sub, "history");
        return true;
      }
      const before = sub.last;
      for (const frame of page.events) if (frame.seq === sub.last + 1) this._apply(sub, frame);
      if (sub.last === before || page.events.length < EVENTS_PAGE) break; // reached the head
    }
    return true;
  }

  _retryCatchUp(sub, upto) {
    if (sub.retry) return;
    sub.retry = setTimeout(() => {
      sub.retry = null;
      this._run(sub, async () => {
        if (!(await this._catchUp(sub, upto)) && !sub.failed) this._retryCatchUp(sub, upto);
      });
    }, 2000);
  }

  /** Load the stream's snapshot (retrying until it comes) and continue from its head. */
  async _reload(sub, reason) {
    for (let attempt = 0; !sub.closed; attempt++) {
      try {
        const snapshot = await this._get(`/streams/${encodeURIComponent(sub.stream)}/snapshot`);
        Object.assign(sub, { epoch: snapshot.epoch, last: snapshot.head });
        this._call(sub.onReset, snapshot, reason);
        return;
      } catch (error) {
        if (error instanceof HttpError && FATAL_HTTP.has(error.status)) {
          this._fail(sub, "http", error.message);
          return;
        }
        await sleep(Math.min(30000, 500 * 2 ** attempt));
      }
    }
  }

  async _reconcile(sub, frame) {
    if (sub.last == null) return; // still loading its snapshot, which is newer anyway
    if (frame.epoch !== sub.epoch) {
      await this._reload(sub, "epoch");
      return;
    }
    const behind = frame.head > sub.last;
    if (behind) await this._catchUp(sub, frame.head);
    // Versions describe the stream at `frame.head`. If we are past it, a lower version there is
    // simply older than ours; only a higher one proves we hold stale data.
    const exact = sub.last === frame.head;
    const stale = [];
    for (const [id, version] of Object.entries(frame.versions ?? {})) {
      const shown = sub.versionOf(id);
      if (shown != null && (exact ? version !== shown : version > shown)) stale.push(id);
    }
    if (stale.length) this._call(sub.onReconcile, frame, stale);
  }

  _call(handler, ...args) {
    try {
      handler(...args);
    } catch (error) {
      console.error("realtime: page handler failed", error); // never let a page bug stop the stream
    }
  }

  // -- HTTP ----------------------------------------------------------------------------------

  async _get(path) {
    const url = this.apiBase + path;
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) throw new HttpError(response.status, url);
    return response.json();
  }

  /** While the socket is down, keep logged streams current over HTTP (protocol §3). */
  _startPolling() {
    if (this._timers.poll) return;
    this._timers.poll = setInterval(() => this._pollOnce(), this.pollInterval);
  }

  _pollOnce() {
    for (const sub of this._subs.values()) {
      if (sub.ephemeral || !sub.ready || sub.failed || sub.last == null || sub.polling) continue;
      sub.polling = true;
      this._run(sub, async () => {
        const ok = await this._catchUp(sub);
        sub.polling = false;
        if (!this._ws || this._ws.readyState !== WebSocket.OPEN) this._setState(ok ? "polling" : "reconnecting");
      }).finally(() => {
        sub.polling = false;
      });
    }
  }

  // -- state ---------------------------------------------------------------------------------

  /** Live once the socket is open and every stream is subscribed (and resumed or reloaded). */
  _maybeLive() {
    if (this._liveOnThisSocket || !this._ws || this._ws.readyState !== WebSocket.OPEN) return;
    for (const sub of this._subs.values()) if (!sub.failed && !sub.confirmed) return;
    this._liveOnThisSocket = true;
    this._clearTimer("poll");
    this._attempt = 0; // the resume worked: the next drop starts the back-off afresh
    if (!this._wasDown) {
      this._setState("live");
      return;
    }
    this._wasDown = false;
    this._setState("resynced");
    this._timers.resynced = setTimeout(() => {
      delete this._timers.resynced;
      if (this.state === "resynced") this._setState("live");
    }, this.resyncedFor);
  }

  _setState(state) {
    if (state === this.state) return;
    this.state = state;
    this._emit("state", { state });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _clearTimer(name) {
    clearTimeout(this._timers[name]);
    clearInterval(this._timers[name]);
    delete this._timers[name];
  }
}
