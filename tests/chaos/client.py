"""A simulated BROS client that follows the protocol's client rules (protocol §3.9) and checks itself.

`ChaosClient` keeps, per logged stream, the epoch, the last applied seq and the state a screen
would show: entities by id for `deliveries`/`orders`/`riders` (an event's `data` is the whole
entity), the latest 100 event frames for the other streams (what their snapshot holds). It starts
from the HTTP snapshot, subscribes with `since`, drops duplicates, fills gaps over HTTP, follows
the heads in server pings, reloads the snapshot on `reset`, never lowers an entity's version and
reconnects with `since` after any close. Or it only polls `GET …/events` (`mode="poll"`).

Everything it does is recorded, so a scenario can assert the suite's three invariants afterwards
(`check`): every stream's seqs were applied contiguously from the snapshot head to the database
head (a reset starts a new run from the reloaded snapshot's head), no entity version went down,
and the state equals a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import quote

import websockets
from django.conf import settings as django_settings
from websockets.asyncio.client import connect as ws_connect

from tests.live.conftest import LiveServer, http_json

ENTITY_NAMESPACES = ("deliveries", "orders", "riders")
RECENT_EVENTS = 100  # what a chat/user/broadcast snapshot holds (realtime/snapshots.py)


@dataclass
class StreamView:
    """One logged stream as one client shows it, and the record of how it got there."""

    name: str
    epoch: str | None = None
    last: int = 0
    runs: list[list[int]] = field(default_factory=list)  # [snapshot head, applied seqs...] per snapshot load
    entities: dict[str, dict] = field(default_factory=dict)
    recent: list[dict] = field(default_factory=list)
    version_downs: list[tuple[str, int, int]] = field(default_factory=list)  # (id, shown, offered)
    received: int = 0  # event frames read from the socket
    fetched: int = 0  # events read over HTTP (gap fills, polling)
    duplicates_dropped: int = 0
    resets: int = 0  # snapshot reloads after the first load
    reconciles: int = 0  # `reconcile` frames handled
    stale: list[tuple[str, int | None, int, int]] = field(default_factory=list)  # (id, shown, frame's, head)
    reset_frames: int = 0  # `reset` frames the server sent
    skipped_by_reset: int = 0  # seqs a snapshot reload stepped over (not lost: the snapshot holds them)

    @property
    def entity_stream(self) -> bool:
        return self.name.split(":", 1)[0] in ENTITY_NAMESPACES

    @property
    def applied(self) -> list[int]:
        return [seq for run in self.runs for seq in run[1:]]

    def load(self, snapshot: dict) -> None:
        """Start (again) from a snapshot: its state, epoch and head."""
        if self.runs:
            self.skipped_by_reset += max(0, snapshot["head"] - self.last)
        self.epoch, self.last = snapshot["epoch"], snapshot["head"]
        self.runs.append([snapshot["head"]])
        if self.entity_stream:
            self.entities = {str(item["id"]): item for item in snapshot["items"]}
        else:
            self.recent = list(snapshot["items"])

    def apply(self, frame: dict) -> None:
        """Apply the event with seq `last + 1` (the caller has dropped duplicates and filled gaps)."""
        assert frame["seq"] == self.last + 1, (self.name, frame["seq"], self.last)
        self.last = frame["seq"]
        self.runs[-1].append(frame["seq"])
        if not self.entity_stream:
            self.recent = [*self.recent, frame][-RECENT_EVENTS:]
            return
        data = frame["data"]
        key = str(data["id"])
        shown = self.entities.get(key)
        if shown is not None and data["version"] < shown["version"]:
            self.version_downs.append((key, shown["version"], data["version"]))
            return  # rule 4: never show a lower version
        if self.name.startswith("riders:") and data.get("center") != self.name.split(":", 1)[1]:
            self.entities.pop(key, None)  # the rider moved to another center
            return
        self.entities[key] = data

    def state(self):
        return self.entities if self.entity_stream else self.recent


def is_open(entity: dict) -> bool:
    """Whether a delivery or order is still in progress (riders are always "open")."""
    return entity.get("status") not in ("delivered", "cancelled")


class ChaosClient:
    """One simulated client (a browser tab) watching `streams` through `servers`."""

    def __init__(
        self,
        name: str,
        servers: list[LiveServer],
        cookie: str,
        streams: list[str],
        *,
        mode: str = "socket",
        poll_interval: float = 0.1,
        rcvbuf: int | None = None,
    ):
        self.name = name
        self.servers = servers
        self.cookie = cookie
        self.views = {stream: StreamView(stream) for stream in streams}
        self.mode = mode
        self.poll_interval = poll_interval
        self.rcvbuf = rcvbuf
        self.online = asyncio.Event()
        self.online.set()
        self.reading = asyncio.Event()  # cleared by `stall()`: the client stops reading its socket
        self.reading.set()
        self.connected = asyncio.Event()  # set while every stream is subscribed on an open socket
        self.close_codes: list[int | None] = []
        self.connections = 0
        self.errors: list[str] = []
        self.markers: list[dict] = []
        self._ws = None
        self._stopped = False
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()  # one frame or fetch applied at a time

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> ChaosClient:
        """Load every stream's snapshot, then connect (or poll) in the background."""
        for view in self.views.values():
            view.load(await self._snapshot(view.name))
        self._task = asyncio.create_task(self._poll() if self.mode == "poll" else self._run(), name=self.name)
        if self.mode == "socket":
            await self.wait_connected()
        return self

    async def wait_connected(self, timeout: float = 15) -> None:
        await asyncio.wait_for(self.connected.wait(), timeout)

    async def go_offline(self) -> None:
        """The network goes away: close the socket and do not come back until `go_online`."""
        self.online.clear()
        self.connected.clear()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 3)

    def go_online(self) -> None:
        self.online.set()

    def stall(self) -> None:
        """Stop reading the socket (a frozen tab): the server's frames pile up in the buffers."""
        self.reading.clear()

    def resume_reading(self) -> None:
        self.reading.set()

    async def stop(self) -> None:
        self._stopped = True
        self.online.set()
        self.reading.set()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 3)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    # -- HTTP (rules 1, 3, 5) -----------------------------------------------------------------------

    def _http_server(self) -> LiveServer:
        alive = [server for server in self.servers if server.alive()]
        if not alive:
            raise ConnectionError("no server is alive")
        return alive[0]

    async def _get(self, path: str) -> dict:
        """GET a JSON answer from a live server, retrying other failures for a few seconds."""
        deadline = time.monotonic() + 15
        while True:
            try:
                status, body = await asyncio.to_thread(http_json, self._http_server(), "GET", path, cookie=self.cookie)
                if status == 200:
                    return body
                error = f"HTTP {status}: {body}"
            except OSError as exc:  # a server died under the request: ask another
                error = repr(exc)
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: GET {path} kept failing ({error})")
            await asyncio.sleep(0.2)

    async def _snapshot(self, stream: str) -> dict:
        return await self._get(f"/api/v1/streams/{quote(stream)}/snapshot")

    async def _reload(self, view: StreamView) -> None:
        view.resets += 1
        view.load(await self._snapshot(view.name))

    async def _fetch(self, view: StreamView, upto: int | None = None) -> None:
        """Apply the events after `view.last` from history (up to `upto`, or to the head)."""
        while upto is None or view.last < upto:
            page = await self._get(
                f"/api/v1/streams/{quote(view.name)}/events?since={view.last}&epoch={view.epoch}&limit=1000"
            )
            if page["reset"]:
                await self._reload(view)
                return
            events = [e for e in page["events"] if upto is None or e["seq"] <= upto]
            for event in events:
                view.fetched += 1
                view.apply(event)
            if not events:
                return

    # -- frames (rules 3–6) -------------------------------------------------------------------------

    async def _handle(self, ws, frame: dict) -> None:
        kind = frame.get("type")
        if kind == "ping":
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send('{"type":"pong"}')
            for stream, head in frame.get("heads", {}).items():
                view = self.views.get(stream)
                if view is not None and head > view.last:
                    await self._fetch(view, upto=head)
            return
        if kind == "marker":  # a test's bus marker (tests.live.conftest.bus_marker)
            self.markers.append(frame)
            return
        view = self.views.get(frame.get("stream"))
        if view is None:
            return
        if kind == "event":
            view.received += 1
            seq = frame["seq"]
            if seq <= view.last:
                view.duplicates_dropped += 1
                return
            if seq > view.last + 1:
                await self._fetch(view, upto=seq - 1)
                if seq <= view.last:  # the fetch reloaded a snapshot that already holds it
                    view.duplicates_dropped += 1
                    return
                if seq != view.last + 1:  # the fill failed: do not leave a hole, the next ping refetches
                    return
            view.apply(frame)
        elif kind == "reset":
            view.reset_frames += 1
            await self._reload(view)
        elif kind == "reconcile":
            await self._reconcile(view, frame)

    async def _reconcile(self, view: StreamView, frame: dict) -> None:
        """Rule 7; an entity it proves stale is recorded (an exact client never has one)."""
        view.reconciles += 1
        if frame["epoch"] != view.epoch:
            await self._reload(view)
            return
        if frame["head"] > view.last:
            await self._fetch(view, upto=frame["head"])
        at_head = view.last == frame["head"]
        for key, version in frame["versions"].items():
            shown = view.entities.get(key)
            shown_version = shown["version"] if shown else None
            if shown_version != version if at_head else (shown_version is None or version > shown_version):
                view.stale.append((key, shown_version, version, frame["head"]))

    # -- the socket (rule 8) --------------------------------------------------------------------------

    async def _open(self, server: LiveServer):
        sock = None
        if self.rcvbuf:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        return await ws_connect(
            server.ws_url,
            origin=server.origin,
            additional_headers={"Cookie": f"{django_settings.SESSION_COOKIE_NAME}={self.cookie}"},
            proxy=None,
            ping_interval=None,
            open_timeout=5,
            close_timeout=1,
            max_size=None,
            max_queue=4 if self.rcvbuf else 16,
            sock=sock,
        )

    async def _run(self) -> None:
        backoff = 0.05
        attempt = 0
        while not self._stopped:
            await self.online.wait()
            if self._stopped:
                return
            candidates = [s for s in self.servers if s.alive()] or self.servers
            server = candidates[attempt % len(candidates)]  # its own server first, then the others
            attempt += 1
            try:
                ws = await self._open(server)
            except (OSError, websockets.InvalidHandshake, TimeoutError):
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            self._ws = ws
            self.connections += 1
            attempt = 0
            try:
                await self._session(ws)
            except websockets.ConnectionClosed:
                pass
            finally:
                self.connected.clear()
                self._ws = None
                self.close_codes.append(ws.close_code)
            backoff = 0.05

    async def _subscribe(self, ws, frame_id: str, view: StreamView, delay: float = 0.0) -> None:
        await asyncio.sleep(delay)
        frame = {"type": "subscribe", "id": frame_id, "stream": view.name, "since": view.last, "epoch": view.epoch}
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(json.dumps(frame))

    async def _session(self, ws) -> None:
        subscribed: set[str] = set()
        by_id = {f"s{i}": view for i, view in enumerate(self.views.values())}
        for frame_id, view in by_id.items():
            await self._subscribe(ws, frame_id, view)
        retries = set()
        async for text in ws:
            frame = json.loads(text)
            if frame.get("type") == "subscribed":
                subscribed.add(frame["stream"])
                if len(subscribed) == len(self.views):
                    self.connected.set()
            if frame.get("type") == "error":
                if frame.get("code") == "internal" and frame.get("id") in by_id:  # retryable (§3.8)
                    view = by_id[frame["id"]]
                    retries.add(asyncio.create_task(self._subscribe(ws, frame["id"], view, delay=0.2)))
                else:
                    self.errors.append(text)
            async with self._lock:
                await self._handle(ws, frame)
            if not self.reading.is_set():
                await self.reading.wait()

    # -- polling only (rule 8, while the socket is down) ------------------------------------------

    async def _poll(self) -> None:
        while not self._stopped:
            for view in self.views.values():
                async with self._lock:
                    await self._fetch(view)
            await asyncio.sleep(self.poll_interval)

    # -- the end of a scenario ----------------------------------------------------------------------

    async def saw(self, marker: dict, timeout: float = 10) -> None:
        """Wait for a bus marker: then everything published before it has been handled."""
        async with asyncio.timeout(timeout):
            while marker not in self.markers:
                await asyncio.sleep(0.02)

    async def caught_up(self, heads: dict[str, int], timeout: float = 20) -> None:
        """Wait until every stream has applied up to `heads` (pings and fetches bring the last ones)."""
        deadline = time.monotonic() + timeout
        while any(self.views[s].last < head for s, head in heads.items() if s in self.views):
            if time.monotonic() > deadline:
                behind = {s: (self.views[s].last, h) for s, h in heads.items() if s in self.views}
                raise AssertionError(f"{self.name} not caught up within {timeout}s: {behind}")
            await asyncio.sleep(0.05)

    async def check(self, heads: dict[str, int]) -> None:
        """Assert the three invariants against the database heads and a fresh snapshot."""
        async with self._lock:
            assert self.errors == [], f"{self.name}: error frames {self.errors}"
            for view in self.views.values():
                for run in view.runs:
                    start, applied = run[0], run[1:]
                    assert applied == list(range(start + 1, start + 1 + len(applied))), (
                        f"{self.name} {view.name}: seqs not contiguous from {start}: {applied}"
                    )
                head = heads[view.name]
                assert view.last == head, f"{self.name} {view.name}: at {view.last}, head {head}"
                assert view.version_downs == [], f"{self.name} {view.name}: versions went down {view.version_downs}"
                fresh = await self._snapshot(view.name)
                assert fresh["head"] == view.last and fresh["epoch"] == view.epoch, (fresh["head"], view.last)
                assert view.stale == [], f"{self.name} {view.name}: reconcile found stale entities {view.stale}"
                if view.entity_stream:
                    expected = {str(item["id"]): item for item in fresh["items"]}
                    # At midnight (TIME_ZONE) a closed entity of the day before leaves the snapshot;
                    # a client that loaded it earlier still shows it, rightly.
                    shown = {key: item for key, item in view.entities.items() if key in expected or is_open(item)}
                    assert shown == expected, f"{self.name} {view.name}: state differs from the snapshot"
                else:
                    assert view.recent == fresh["items"], f"{self.name} {view.name}: state differs from the snapshot"
