// The chat panel (chat/_panel.html): center rooms and direct conversations, live over its own
// RealtimeClient, history from PostgreSQL through the snapshot and older pages on scroll up.
//
// Lazy on purpose: nothing is fetched before the page has loaded and the browser is idle, so the
// page that includes the panel (the dispatcher board) keeps its own hot path to itself.
// Every message is rendered with DOM text nodes (never innerHTML): links are made only from
// http(s) URLs and `#1234` order numbers, the latter only for those who may open deliveries.

import { RealtimeClient } from "../realtime/client.js";

const API = "/api/v1";
const MAX_TEXT = 2000;
const ROLE_NAMES = { hq: "HQ", dispatcher: "Dispatcher", callcenter: "Call center", rider: "Rider" };
const LINKABLE = /(https?:\/\/[^\s<>"']+)|(#\d{1,9})(?![\w])/g;

const panel = document.getElementById("chat-panel");
const $ = (id) => document.getElementById(id);
const el = {
  toggle: $("chat-toggle"),
  body: $("chat-body"),
  close: $("chat-close"),
  total: $("chat-total"),
  conn: $("chat-conn"),
  rooms: $("chat-rooms"),
  title: $("chat-room-title"),
  log: $("chat-log"),
  empty: $("chat-empty"),
  list: $("chat-messages"),
  form: $("chat-form"),
  input: $("chat-input"),
  error: $("chat-error"),
  count: $("chat-count"),
  send: $("chat-send"),
  readonly: $("chat-readonly"),
};

const state = {
  me: null,
  rt: null,
  rooms: new Map(), // stream -> room
  current: null, // the open room's stream
  open: panel?.dataset.inline === "true",
  started: false,
  roomsLoaded: false, // the rooms came from the server
  roomsShown: false, // their list is in the DOM (built on the first open)
};

function csrfToken() {
  return document.cookie.split("; ").find((c) => c.startsWith("csrftoken="))?.split("=")[1] || "";
}

function newId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 12)}`;
}

async function api(path, { method = "GET", body, headers = {}, keepalive = false } = {}) {
  const response = await fetch(`${API}${path}`, {
    method,
    keepalive,
    credentials: "same-origin",
    headers: {
      Accept: "application/json",
      ...(body === undefined ? {} : { "Content-Type": "application/json", "X-CSRFToken": csrfToken() }),
      ...headers,
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try {
    data = await response.json();
  } catch {
    // not JSON (a proxy's error page): the status says enough
  }
  return { ok: response.ok, status: response.status, data, retryAfter: response.headers.get("Retry-After") };
}

// ---------------------------------------------------------------- rendering one message

function deliveryCenter(room) {
  if (room.stream.startsWith("chat:")) return room.stream.slice(5);
  return boardCenter() ?? state.me.centers[0];
}

function canOpenDeliveries() {
  return state.me && (state.me.role === "hq" || state.me.role === "dispatcher");
}

/** `text` as DOM nodes: plain text, safe http(s) links, and `#1234` delivery links where allowed. */
function renderText(text, room) {
  const fragment = document.createDocumentFragment();
  let last = 0;
  for (const match of text.matchAll(LINKABLE)) {
    let [token] = match;
    let start = match.index;
    if (match[1]) {
      const trimmed = token.replace(/[.,;:!?)\]]+$/, ""); // sentence punctuation is no part of a URL
      token = trimmed;
    }
    const link = match[1] ? safeUrlLink(token) : deliveryLink(token, room);
    if (!link) continue;
    fragment.append(document.createTextNode(text.slice(last, start)), link);
    last = start + token.length;
  }
  fragment.append(document.createTextNode(text.slice(last)));
  return fragment;
}

function safeUrlLink(token) {
  let url;
  try {
    url = new URL(token);
  } catch {
    return null;
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") return null;
  const a = document.createElement("a");
  a.href = url.href;
  a.textContent = token;
  a.target = "_blank";
  a.rel = "noopener noreferrer nofollow";
  return a;
}

/** `#1234` is an order number, as the board shows it: for HQ and dispatchers a link to its delivery. */
function deliveryLink(token, room) {
  if (!canOpenDeliveries()) return null;
  const center = deliveryCenter(room);
  if (!center) return null;
  const a = document.createElement("a");
  a.href = `/dispatch/${encodeURIComponent(center)}/`; // the board; a click opens the order's delivery there
  a.textContent = token;
  a.className = "chat-delivery";
  a.dataset.order = token.slice(1);
  return a;
}

function boardCenter() {
  const config = document.getElementById("board-config");
  return config ? JSON.parse(config.textContent).center : null;
}

/** Open the order's delivery: in the board's drawer, on this board or on its center's board. */
async function openOrder(link) {
  const result = await api(`/orders/${encodeURIComponent(link.dataset.order)}`);
  if (!result.ok || !result.data?.delivery) {
    link.classList.add("chat-dead-link");
    link.title = result.status === 404 ? "No such order, or not one you can open." : "Could not open the order; try again.";
    return;
  }
  const { center, delivery } = result.data;
  if (boardCenter() === center) {
    document.dispatchEvent(new CustomEvent("bros:open-delivery", { detail: { id: delivery.id } }));
    return;
  }
  sessionStorage.setItem("bros:open-delivery", JSON.stringify({ center, id: delivery.id }));
  location.href = `/dispatch/${encodeURIComponent(center)}/`;
}

function timeText(iso) {
  const date = new Date(iso);
  const sameDay = date.toDateString() === new Date().toDateString();
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return sameDay ? time : `${date.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
}

function messageItem(frame, room, { pending = false } = {}) {
  const data = frame.data;
  const li = document.createElement("li");
  li.className = "chat-msg";
  if (data.author_id === state.me.id) li.classList.add("mine");
  if (pending) li.classList.add("pending");
  if (frame.seq != null) li.dataset.seq = frame.seq;
  if (data.client_msg_id) li.dataset.clientId = data.client_msg_id;
  const meta = document.createElement("div");
  meta.className = "chat-meta";
  const author = document.createElement("span");
  author.className = "chat-author";
  author.textContent = data.author_name;
  meta.append(author);
  if (data.author_role) {
    const role = document.createElement("span");
    role.className = `chat-role role-${data.author_role}`;
    role.textContent = ROLE_NAMES[data.author_role] ?? data.author_role;
    meta.append(" ", role);
  }
  const time = document.createElement("time");
  time.dateTime = data.sent_at;
  time.textContent = pending ? "sending…" : timeText(data.sent_at);
  meta.append(" ", time);
  const text = document.createElement("p");
  text.className = "chat-text";
  text.append(renderText(data.text, room));
  li.append(meta, text);
  return li;
}

// ---------------------------------------------------------------- rooms and badges

function roomButton(room) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "chat-room";
  button.dataset.stream = room.stream;
  const name = document.createElement("span");
  name.className = "chat-room-name";
  name.textContent = room.kind === "center" ? `# ${room.title}` : room.title;
  button.append(name);
  if (room.peer?.role) {
    const role = document.createElement("span");
    role.className = "chat-role";
    role.textContent = ROLE_NAMES[room.peer.role] ?? room.peer.role;
    button.append(" ", role);
  }
  const badge = document.createElement("span");
  badge.className = "chat-badge";
  button.append(" ", badge);
  room.button = button;
  room.badge = badge;
  return button;
}

function renderRooms() {
  state.roomsShown = true;
  el.rooms.replaceChildren();
  if (!state.rooms.size) {
    const p = document.createElement("p");
    p.className = "chat-empty-rooms";
    p.textContent = "You have no chat rooms.";
    el.rooms.append(p);
    return;
  }
  const groups = [
    ["Rooms", [...state.rooms.values()].filter((r) => r.kind === "center")],
    ["Direct messages", [...state.rooms.values()].filter((r) => r.kind === "direct")],
  ];
  for (const [label, rooms] of groups) {
    if (!rooms.length) continue;
    const heading = document.createElement("h3");
    heading.className = "chat-group";
    heading.textContent = label;
    const list = document.createElement("div");
    list.className = "chat-room-list";
    list.append(...rooms.map(roomButton));
    el.rooms.append(heading, list);
  }
  renderBadges();
}

// A center room's unread messages are counted from the messages it holds, when they reach back to
// the read position: the server's count and the room's own events can arrive in either order, so
// adding one to the other would count a message twice or not at all. Only a room with more unread
// than its loaded window (the snapshot's 50) keeps the server's count, plus one per event.
function countUnread(room) {
  if (room.kind !== "center" || !room.loaded) return;
  const read = Math.max(room.lastRead, room.seenTo); // seen counts as read before the server has it
  const oldest = room.frames.length ? room.frames[0].seq : Infinity;
  if (room.more && oldest > read + 1) return;
  room.unread = room.frames.filter((f) => f.seq > read && f.data.author_id !== state.me.id).length;
}

function renderBadges() {
  let total = 0;
  for (const room of state.rooms.values()) {
    countUnread(room);
    total += room.unread;
    if (!room.badge) continue;
    room.badge.textContent = room.unread > 99 ? "99+" : String(room.unread);
    room.badge.hidden = room.unread === 0;
    room.badge.setAttribute("aria-label", `${room.unread} unread`);
    room.button.setAttribute("aria-current", room.stream === state.current ? "true" : "false");
  }
  el.total.textContent = total > 99 ? "99+" : String(total);
  el.total.hidden = total === 0;
}

// ---------------------------------------------------------------- messages of a room

function addFrames(room, frames) {
  const arrived = new Set();
  for (const frame of frames) {
    if (frame.event !== "chat.message" || room.seqs.has(frame.seq)) continue;
    room.seqs.add(frame.seq);
    room.frames.push(frame);
    if (frame.data.author_id === state.me.id && frame.data.client_msg_id) arrived.add(frame.data.client_msg_id);
  }
  room.frames.sort((a, b) => a.seq - b.seq);
  // One's own message, shown as "sending…" until now, is replaced by the stored one.
  if (arrived.size) room.pending = room.pending.filter((p) => !arrived.has(p.data.client_msg_id));
}

function renderLog({ keepBottom = true } = {}) {
  const room = state.rooms.get(state.current);
  if (!room) return;
  const atBottom = el.log.scrollHeight - el.log.scrollTop - el.log.clientHeight < 40;
  const heightBefore = el.log.scrollHeight;
  const topBefore = el.log.scrollTop;
  el.list.replaceChildren(
    ...room.frames.map((f) => messageItem(f, room)),
    ...room.pending.map((p) => messageItem(p, room, { pending: !p.sent })),
  );
  el.empty.hidden = !room.loaded || room.frames.length > 0 || room.pending.length > 0;
  if (!room.loaded) el.empty.hidden = true;
  if (keepBottom && (atBottom || room.stickToBottom)) {
    el.log.scrollTop = el.log.scrollHeight;
    room.stickToBottom = false;
  } else if (!keepBottom) {
    el.log.scrollTop = topBefore + (el.log.scrollHeight - heightBefore); // older page above: stay put
  }
}

function followRoom(room) {
  if (room.sub) return;
  room.sub = state.rt.subscribe(room.stream, {
    onReset(snapshot) {
      room.frames = [];
      room.seqs = new Set();
      addFrames(room, snapshot.items);
      room.loaded = true;
      room.more = snapshot.items.length >= 50;
      renderBadges();
      if (room.stream === state.current) {
        room.stickToBottom = true;
        renderLog();
        markReadSoon(room);
      }
    },
    onEvent(frame) {
      if (frame.event !== "chat.message") return;
      const fresh = !room.seqs.has(frame.seq);
      addFrames(room, [frame]);
      if (fresh && frame.data.author_id !== state.me.id) {
        if (isSeen(room)) markReadSoon(room);
        else if (room.kind === "center") room.unread += 1; // conversations: chat.unread on user:<me> says
        if (!state.open || document.hidden) chime();
      }
      renderBadges();
      if (room.stream === state.current) renderLog();
    },
  });
}

function isSeen(room) {
  return state.open && room.stream === state.current && !document.hidden;
}

async function loadOlder() {
  const room = state.rooms.get(state.current);
  if (!room || !room.loaded || !room.more || room.loadingOlder || !room.frames.length) return;
  room.loadingOlder = true;
  el.log.setAttribute("aria-busy", "true");
  const before = room.frames[0].seq;
  const result = await api(`/chat/${encodeURIComponent(room.stream)}/messages?before=${before}&limit=50`);
  room.loadingOlder = false;
  el.log.removeAttribute("aria-busy");
  if (!result.ok) return;
  addFrames(room, result.data.messages);
  room.more = result.data.more;
  if (room.stream === state.current) renderLog({ keepBottom: false });
}

function openRoom(stream) {
  const room = state.rooms.get(stream);
  if (!room) return;
  state.current = stream;
  el.title.textContent = room.kind === "center" ? `# ${room.title}` : room.title;
  el.form.hidden = !room.can_write;
  el.readonly.hidden = room.can_write;
  hideError();
  room.stickToBottom = true;
  followRoom(room);
  renderLog();
  renderBadges();
  markReadSoon(room);
}

let readTimer = null;
let readSoon = null; // {room, seq}: the read position that waits for the timer
// What is on screen now is read; the timer only batches a burst of messages into one request. The
// position is taken now, not when the timer fires: a message that arrives after the panel closed
// (or the room changed) in between was never seen, and stays unread.
function markReadSoon(room) {
  if (!isSeen(room) || !room.loaded) return;
  if (readSoon && readSoon.room !== room) flushRead(); // another room's read is not dropped
  clearTimeout(readTimer);
  const seq = room.frames.length ? room.frames[room.frames.length - 1].seq : 0;
  room.seenTo = Math.max(room.seenTo, seq);
  readSoon = { room, seq };
  readTimer = setTimeout(() => flushRead(), 300);
}

// Also on leaving the page (reload, navigation) before the timer fires: what was read is saved.
function flushRead({ keepalive = false } = {}) {
  if (!readSoon) return;
  clearTimeout(readTimer);
  const { room, seq } = readSoon;
  readSoon = null;
  markRead(room, seq, { keepalive });
}

async function markRead(room, seq, { keepalive = false } = {}) {
  if (seq <= room.lastRead && room.unread === 0) return;
  const result = await api(`/chat/${encodeURIComponent(room.stream)}/read`, { method: "POST", body: { seq }, keepalive });
  if (!result.ok) return;
  room.unread = result.data.unread;
  room.lastRead = Math.max(room.lastRead, result.data.last_read);
  renderBadges();
}

// ---------------------------------------------------------------- sending

function showError(text) {
  el.error.textContent = text;
  el.error.hidden = false;
  el.input.setAttribute("aria-invalid", "true");
}

function hideError() {
  el.error.hidden = true;
  el.error.textContent = "";
  el.input.removeAttribute("aria-invalid");
}

function refusalText(result) {
  if (result.status === 429) return `Too many messages; try again in ${result.retryAfter || "a few"} s.`;
  if (result.status === 403) return "You may not write here.";
  const detail = result.data?.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail) && detail[0]?.msg) return detail[0].msg;
  return "The message could not be sent. Try again.";
}

async function publish(room, data) {
  // Over the socket when it is up, else over HTTP; the same client_msg_id makes a retry harmless.
  try {
    const ack = await state.rt.publish(room.stream, "chat.message", data);
    return { ok: true, seq: ack.seq };
  } catch (error) {
    if (error.code === "rate_limited") return { ok: false, status: 429 };
    if (error.code === "forbidden") return { ok: false, status: 403 };
    if (error.code === "bad_request") return { ok: false, status: 422, data: { detail: error.message } };
  }
  const [namespace, roomName] = room.stream.split(":");
  const result = await api("/publish", {
    method: "POST",
    body: { namespace, room: roomName, event: "chat.message", data },
    headers: { "Idempotency-Key": data.client_msg_id },
  });
  return result.ok ? { ok: true, seq: result.data.seq } : result;
}

async function send(event) {
  event.preventDefault();
  const room = state.rooms.get(state.current);
  const text = el.input.value.trim();
  if (!room) return;
  if (!text) return showError("Write a message first.");
  if (text.length > MAX_TEXT) return showError(`Messages are limited to ${MAX_TEXT} characters.`);
  hideError();
  const data = { text, client_msg_id: newId() };
  const pending = {
    data: { ...data, author_id: state.me.id, author_name: state.me.name, author_role: state.me.role, sent_at: new Date().toISOString() },
  };
  room.pending.push(pending);
  room.stickToBottom = true;
  renderLog();
  el.send.disabled = true;
  let result;
  try {
    result = await publish(room, data);
  } catch {
    result = { ok: false, status: 0 };
  }
  el.send.disabled = false;
  if (result.ok) {
    pending.sent = !room.seqs.has(result.seq); // shown as sent until its event replaces it
    if (!pending.sent) room.pending = room.pending.filter((p) => p !== pending);
    if (el.input.value.trim() === text) el.input.value = "";
    updateCount(); // the message itself arrives as the room's event
  } else {
    room.pending = room.pending.filter((p) => p !== pending);
    showError(result.status === 0 ? "You are offline; the message was not sent." : refusalText(result));
  }
  renderLog();
  el.input.focus();
}

function updateCount() {
  el.count.textContent = `${el.input.value.length} / ${MAX_TEXT}`;
}

// ---------------------------------------------------------------- sound

let audio = null;
function chime() {
  try {
    audio ??= new AudioContext();
    const tone = audio.createOscillator();
    const gain = audio.createGain();
    tone.frequency.value = 880;
    gain.gain.setValueAtTime(0.08, audio.currentTime);
    gain.gain.exponentialRampToValueAtTime(0.0001, audio.currentTime + 0.25);
    tone.connect(gain).connect(audio.destination);
    tone.start();
    tone.stop(audio.currentTime + 0.25);
    panel.dataset.chimes = String(Number(panel.dataset.chimes || 0) + 1); // for tests and curious eyes
  } catch {
    // no audio (autoplay policy before any click): the badge still says it
  }
}

// ---------------------------------------------------------------- open / close

function setOpen(open) {
  state.open = open;
  el.body.hidden = !open;
  el.toggle.setAttribute("aria-expanded", String(open));
  panel.classList.toggle("open", open);
  if (!open) return;
  if (state.roomsLoaded && !state.roomsShown) renderRooms();
  start();
  const room = state.rooms.get(state.current);
  if (room) markReadSoon(room);
  (el.form.hidden ? el.log : el.input).focus();
}

// ---------------------------------------------------------------- start

async function start() {
  if (state.started) return;
  state.started = true;
  const [me, rooms] = await Promise.all([api("/me"), api("/chat/rooms")]);
  if (!me.ok || !rooms.ok) {
    el.rooms.replaceChildren(Object.assign(document.createElement("p"), { textContent: "Chat is unavailable right now." }));
    state.started = false;
    return;
  }
  const name = document.querySelector(".topbar .who")?.textContent?.trim();
  state.me = { ...me.data, name: name || me.data.username };
  for (const info of rooms.data.rooms) {
    state.rooms.set(info.stream, {
      ...info,
      lastRead: info.last_read,
      seenTo: 0, // the newest message shown in the open panel: read, if not yet saved
      frames: [],
      seqs: new Set(),
      pending: [],
      loaded: false,
      more: false,
    });
  }
  state.roomsLoaded = true;
  // The room list (a button per rider for a center's dispatcher: hundreds) is built when the panel
  // first opens; until then the closed panel needs only the unread counts for its badge.
  if (state.open) renderRooms();
  else renderBadges();
  // Its own socket, so the page's client (the board's) carries nothing for chat; the query string,
  // which the server ignores, tells the two apart in the browser's tools (and test proxies).
  state.rt = new RealtimeClient({ url: "/ws/v1/?panel=chat", apiBase: API });
  state.rt.addEventListener("state", (e) => {
    el.conn.textContent = e.detail.state === "live" ? "" : e.detail.state === "polling" ? "Offline · sending over HTTP" : "Connecting…";
  });
  state.rt.subscribe(`user:${state.me.id}`, {
    snapshot: false,
    onEvent(frame) {
      if (frame.event !== "chat.unread") return;
      const room = state.rooms.get(frame.data.stream);
      if (!room) return;
      const grew = frame.data.unread > room.unread;
      room.unread = frame.data.unread;
      room.lastRead = Math.max(room.lastRead, frame.data.last_read);
      if (grew && room.kind === "direct") {
        if (room.sub === undefined && room.stream === state.current) followRoom(room);
        if (isSeen(room)) markReadSoon(room);
        else if (!state.open || document.hidden) chime();
      }
      renderBadges();
    },
  });
  for (const room of state.rooms.values()) if (room.kind === "center") followRoom(room);
  const first = [...state.rooms.values()].find((r) => r.unread > 0) ?? state.rooms.values().next().value;
  if (first) openRoom(first.stream);
}

function whenIdle(fn) {
  const later = () => ("requestIdleCallback" in globalThis ? requestIdleCallback(fn, { timeout: 2000 }) : setTimeout(fn, 200));
  if (document.readyState === "complete") later();
  else addEventListener("load", later, { once: true });
}

if (panel) {
  el.toggle.addEventListener("click", () => setOpen(!state.open));
  el.close?.addEventListener("click", () => {
    setOpen(false);
    el.toggle.focus();
  });
  panel.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.open && panel.dataset.inline !== "true") {
      setOpen(false);
      el.toggle.focus();
    }
  });
  el.rooms.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-stream]");
    if (button) openRoom(button.dataset.stream);
  });
  el.log.addEventListener("scroll", () => {
    if (el.log.scrollTop < 60) loadOlder();
  });
  el.log.addEventListener("click", (event) => {
    const link = event.target.closest("a.chat-delivery");
    if (!link) return;
    event.preventDefault();
    openOrder(link);
  });
  el.form.addEventListener("submit", send);
  el.input.addEventListener("input", () => {
    updateCount();
    if (!el.error.hidden && el.input.value.trim()) hideError();
  });
  el.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      el.form.requestSubmit();
    }
  });
  document.addEventListener("visibilitychange", () => {
    const room = state.rooms.get(state.current);
    if (room && !document.hidden) markReadSoon(room);
  });
  window.addEventListener("pagehide", () => flushRead({ keepalive: true }));
  whenIdle(start); // the badges need the rooms even while the panel is closed
}
