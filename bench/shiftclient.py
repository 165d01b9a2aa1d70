"""One load-client process for bench/shift.py: dashboards and riders on one asyncio (uvloop) loop.

The connection, handshake and frame parsing are bench/loadclient.py's (`Client`, `Worker`); this
module only adds what a shift needs, steered the same way (one JSON command per line on stdin):

- a **dashboard** subscribes to its center's `deliveries`, `riders` and `positions` streams, as
  the board does (static/deliveries/board.js), one after the other. Per logged stream it tracks
  the seq (gaps, duplicates, events received since the `head` of its `subscribed`). For every
  `deliveries:*` event it records command-to-screen latency: receipt time minus the frame's own
  `ts` (when the event was written, in the command's transaction; milliseconds). Dashboards
  flagged `sample` also parse `rider.positions` frames and record position-to-map latency per
  fix: receipt time minus the fix's `ts`, which the rider set when it sent the fix. (Parsing
  every 500-rider positions frame on every dashboard would cost the load clients more CPU than
  the server spends; the others only count those frames.)
- a **rider** subscribes to its `user:<id>` stream (as the rider page does) and, once told to,
  sends a `position` frame over its socket every `interval` seconds (the riders are spread
  evenly over the interval).

Latencies are kept in 1 ms buckets, per progress interval and for the whole run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadclient
import uvloop

MAX_MS = 60_000  # later receipts are counted in the last bucket


def parse_ts(value: str) -> float:
    """An ISO 8601 UTC timestamp of the protocol (`…Z` or `…+00:00`) as Unix time."""
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def iso_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def add_ms(hist: dict[int, int], seconds: float) -> None:
    ms = min(MAX_MS, max(0, int(seconds * 1000)))
    hist[ms] = hist.get(ms, 0) + 1


class SeqTrack:
    """One logged stream as one client sees it: gapless seqs from the `head` it subscribed at."""

    __slots__ = ("start", "last", "received", "gaps", "dups")

    def __init__(self, head: int):
        self.start = head
        self.last = head
        self.received = 0
        self.gaps = 0
        self.dups = 0

    def see(self, seq: int) -> None:
        if seq <= self.last:
            self.dups += 1
            return
        self.gaps += seq - self.last - 1
        self.last = seq
        self.received += 1

    def lost(self, head: int) -> int:
        """Events of (start, head] this client never got (0 when it got every one exactly once)."""
        return max(0, head - self.start - self.received)


class Totals:
    def __init__(self):
        self.cmd_all: dict[int, int] = {}
        self.pos_all: dict[int, int] = {}
        self.cmd: dict[int, int] = {}
        self.pos: dict[int, int] = {}
        self.events = 0
        self.position_frames = 0
        self.fixes_sent = 0
        self.errors: dict[str, int] = {}
        self.measuring = False  # set when the riders start sending


TOTALS = Totals()


class ShiftClient(loadclient.Client):
    """A loadclient connection whose `subscribe` is this module's JSON config (role, frames, sample)."""

    def __init__(self, index, kind, url, headers, fast, subscribe):
        config = json.loads(subscribe)
        self.role = config["role"]
        self.frames = [json.dumps(f, separators=(",", ":")).encode() for f in config["frames"]]
        self.sample = config.get("sample", False)
        self.center = config.get("center", [0.0, 0.0])
        self.pending = len(self.frames)
        self.streams: dict[str, SeqTrack] = {}
        super().__init__(index, kind, url, headers, fast, self.frames[0])

    def on_text(self, payload: bytes) -> None:
        if payload.startswith(b'{"type":"event"'):
            if not self.sample and b'"positions:' in payload[:60]:
                TOTALS.position_frames += 1
                return
            self.on_frame(json.loads(payload), time.time())
        elif payload.startswith(b'{"type":"ping"'):
            self.send_text(b'{"type":"pong"}')
        else:
            frame = json.loads(payload)
            kind = frame.get("type")
            if kind == "event":
                self.on_frame(frame, time.time())
            elif kind == "ping":
                self.send_text(b'{"type":"pong"}')
            elif kind == "subscribed":
                if "head" in frame:
                    self.streams[frame["stream"]] = SeqTrack(frame["head"])
                self.pending -= 1
                if self.pending:
                    self.send_text(self.frames[len(self.frames) - self.pending])
                elif not self.ready.done():
                    self.ready.set_result(True)
            elif kind == "error":
                key = f"{frame.get('code')}: {frame.get('message')}"
                TOTALS.errors[key] = TOTALS.errors.get(key, 0) + 1
                if not self.ready.done():
                    self._fail(ConnectionError(payload.decode()))
            else:
                self.other[kind] = self.other.get(kind, 0) + 1

    def on_frame(self, frame: dict, now: float) -> None:
        stream = frame["stream"]
        if "seq" in frame:
            track = self.streams.get(stream)
            if track is not None:
                track.see(frame["seq"])
            TOTALS.events += 1
            if stream.startswith("deliveries:"):
                latency = now - parse_ts(frame["ts"])
                add_ms(TOTALS.cmd, latency)
                add_ms(TOTALS.cmd_all, latency)
        elif frame.get("event") == "rider.positions":
            TOTALS.position_frames += 1
            if TOTALS.measuring and self.sample:  # not the snapshot frame a subscriber gets first
                for fix in frame["data"]["positions"]:
                    latency = now - parse_ts(fix["ts"])
                    add_ms(TOTALS.pos, latency)
                    add_ms(TOTALS.pos_all, latency)

    def send_fix(self) -> None:
        lat, lng = self.center
        fix = {"type": "position", "lat": lat + random.uniform(-0.02, 0.02), "lng": lng + random.uniform(-0.02, 0.02)}
        fix["ts"] = iso_now()
        self.send_text(json.dumps(fix, separators=(",", ":")).encode())
        TOTALS.fixes_sent += 1


class ShiftWorker(loadclient.Worker):
    def __init__(self):
        super().__init__()
        self.sender: asyncio.Task | None = None

    async def send_fixes(self, interval: float) -> None:
        riders = [c for c in self.clients if c.role == "rider"]
        if not riders:
            return
        start = time.monotonic()
        step = interval / len(riders)
        n = 0
        while True:
            rider = riders[n % len(riders)]
            due = start + n * step
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if rider.open and not rider.transport.is_closing():
                rider.send_fix()
            n += 1

    async def handle(self, cmd: dict):
        op = cmd["cmd"]
        if op == "riders_start":
            TOTALS.measuring = True
            self.sender = asyncio.create_task(self.send_fixes(cmd["interval"]))
            return {"ok": True}
        if op == "riders_stop":
            if self.sender is not None:
                self.sender.cancel()
            return {"ok": True, "fixes_sent": TOTALS.fixes_sent}
        if op == "sample":
            answer = {
                "cmd": TOTALS.cmd,
                "pos": TOTALS.pos,
                "events": TOTALS.events,
                "position_frames": TOTALS.position_frames,
                "fixes_sent": TOTALS.fixes_sent,
                "dashboards_open": sum(c.open for c in self.clients if c.role == "dashboard"),
                "riders_open": sum(c.open for c in self.clients if c.role == "rider"),
                "gaps": sum(t.gaps for c in self.clients for t in c.streams.values()),
                "dups": sum(t.dups for c in self.clients for t in c.streams.values()),
                "errors": TOTALS.errors,
            }
            TOTALS.cmd, TOTALS.pos = {}, {}
            return answer
        if op == "behind":
            # How many dashboards have not yet seen every event up to `heads` (stream -> head).
            heads = cmd["heads"]
            behind = 0
            for c in self.clients:
                if any(t.last < heads.get(s, 0) for s, t in c.streams.items() if c.open):
                    behind += 1
            return {"behind": behind}
        if op == "final":
            heads = cmd["heads"]
            dashboards = [c for c in self.clients if c.role == "dashboard"]
            lost = [sum(t.lost(heads.get(s, t.last)) for s, t in c.streams.items()) for c in dashboards]
            ru = resource.getrusage(resource.RUSAGE_SELF)
            return {
                "cmd_all": TOTALS.cmd_all,
                "pos_all": TOTALS.pos_all,
                "lost": lost,
                "gaps": sum(t.gaps for c in dashboards for t in c.streams.values()),
                "dups": sum(t.dups for c in dashboards for t in c.streams.values()),
                "closed": sum(not c.open for c in self.clients),
                "close_codes": loadclient._count(c.close_code for c in self.clients if c.close_code is not None),
                "other": loadclient._merge(c.other for c in self.clients),
                "cpu": ru.ru_utime + ru.ru_stime,
            }
        return await super().handle(cmd)


if __name__ == "__main__":
    loadclient.Client = ShiftClient  # the Worker's connect builds this module's clients
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(ShiftWorker().run())
