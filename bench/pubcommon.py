"""What the Python publishers share: the command loop on stdin/stdout and the publish schedule.

A publisher reads one JSON command per line and answers one JSON line per command:
    {"rate": 20, "count": 200, "rooms": ["broadcast:all"], "tag": 3, "pad": 100, ...}
 -> {"published": 200, "t_first": ..., "t_last": ..., "t_pub": [...], "per_room": [200], "late_max": ...}
Event n goes to rooms[n % len(rooms)] at start + n / rate (rate 0: as fast as possible) and
carries the text `bench r=<tag> n=<n> t0=<unix time> <padding>`; `t_pub[n]` is when its publish
call started (the latency origin the runner uses).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

START_DELAY = 0.05


def event_text(tag: int, n: int, t0: float | None, pad: int) -> str:
    stamp = f"{t0:.6f}" if t0 is not None else "-"
    return f"bench r={tag} n={n} t0={stamp} " + "x" * pad


class Schedule:
    def __init__(self, rate: float, start: float | None = None):
        self.rate = rate
        self.start = (start or time.time()) + START_DELAY
        self.late_max = 0.0

    def delay(self, n: int) -> float:
        if not self.rate:
            return 0.0
        wait = self.start + n / self.rate - time.time()
        if wait < 0:
            self.late_max = max(self.late_max, -wait)
        return wait

    def wait(self, n: int) -> None:
        wait = self.delay(n)
        if wait > 0:
            time.sleep(wait)

    async def await_(self, n: int) -> None:
        wait = self.delay(n)
        if wait > 0:
            await asyncio.sleep(wait)


def result(cmd: dict, t_pub: list[float], schedule: Schedule, **extra) -> dict:
    rooms = cmd["rooms"]
    per_room = [0] * len(rooms)
    for n in range(len(t_pub)):
        per_room[n % len(rooms)] += 1
    return {
        "published": len(t_pub),
        "t_first": t_pub[0] if t_pub else None,
        "t_last": t_pub[-1] if t_pub else None,
        "t_pub": [round(t, 6) for t in t_pub],
        "per_room": per_room,
        "late_max": schedule.late_max,
        **extra,
    }


def serve(run_one) -> None:
    """Answer commands until stdin closes or {"quit": true}; `run_one(cmd) -> dict`."""
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd.get("quit"):
            break
        try:
            answer = run_one(cmd)
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer, separators=(",", ":")), flush=True)
