"""What the real-time path counts: Prometheus metrics and this process's figures for the ops monitor.

The hub and the consumer call `stats` at a few points: per event (once per process, however many
sockets follow the stream), per gap fill, per reset, per connect and disconnect, never per socket
per event. Each call updates two things: the Prometheus metrics (`/metrics`, summed over this
host's processes in multi-process mode) and plain running totals that the presence heartbeat
writes into this process's record for `/ops/` (`ProcessStats.sample`).

Publish lag is measured from an event's `ts` (taken in the command's transaction, just before its
commit) to the moment the hub hands the frame to its local sockets.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime

from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge, Histogram

CONNECTIONS = Gauge(
    "bros_ws_connections",
    "Open WebSocket connections of a server process, by role.",
    ["role"],
    multiprocess_mode="liveall",
)
EVENTS = PromCounter("bros_events", "Logged events a server process delivered to its local subscribers.")
FRAMES_SENT = PromCounter("bros_frames_sent", "Frames the hubs handed to sockets (one per subscriber per frame).")
PUBLISH_LAG = Histogram(
    "bros_publish_lag_seconds",
    "From an event's commit to its hub handing it to the sockets.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
GAP_REPAIRS = PromCounter("bros_gap_repairs", "Gaps in a stream's seqs that a hub filled from history.")
RESETS = PromCounter(
    "bros_resets", "Reset frames sent: per feed (history_reset) or per subscriber (history_expired).", ["reason"]
)
RECONCILE_MISMATCHES = PromCounter(
    "bros_reconcile_mismatches", "Reconcile frames that found a hub behind its stream's head (then filled)."
)

_TS_MARK = ',"ts":"'
_TS_LENGTH = len("2026-01-01T00:00:00.000Z")


def event_time(frame: str) -> float | None:
    """The `ts` of an encoded event frame as a Unix time (None if it has none).

    `outbox.encode_frame` writes `ts` right after the short `type`, `stream`, `seq` and `event`
    fields, so a `find` near the start of the text is enough: the frame is not decoded.
    """
    start = frame.find(_TS_MARK, 0, 200)
    if start < 0:
        return None
    start += len(_TS_MARK)
    try:
        return datetime.fromisoformat(frame[start : start + _TS_LENGTH]).timestamp()
    except ValueError:
        return None


class ProcessStats:
    """This process's running totals since it started, and its publish lag since the last sample."""

    def __init__(self) -> None:
        self.connections: Counter[str] = Counter()
        self.events = 0
        self.frames_sent = 0
        self.gap_repairs = 0
        self.resets = 0
        self.reconcile_mismatches = 0
        self._lag_sum = 0.0
        self._lag_count = 0
        self._lag_max = 0.0

    def connected(self, role: str | None) -> None:
        role = role or "none"
        self.connections[role] += 1
        CONNECTIONS.labels(role).inc()

    def disconnected(self, role: str | None) -> None:
        role = role or "none"
        self.connections[role] -= 1
        CONNECTIONS.labels(role).dec()

    def delivered(self, frame: str, subscribers: int, *, logged: bool) -> None:
        """One frame went to `subscribers` local sockets; a logged event also has its lag measured."""
        self.frames_sent += subscribers
        FRAMES_SENT.inc(subscribers)
        if not logged:
            return
        self.events += 1
        EVENTS.inc()
        committed = event_time(frame)
        if committed is not None:
            lag = max(0.0, time.time() - committed)
            PUBLISH_LAG.observe(lag)
            self._lag_sum += lag
            self._lag_count += 1
            self._lag_max = max(self._lag_max, lag)

    def gap_repaired(self) -> None:
        self.gap_repairs += 1
        GAP_REPAIRS.inc()

    def reset_sent(self, reason: str) -> None:
        self.resets += 1
        RESETS.labels(reason).inc()

    def reconcile_mismatch(self) -> None:
        self.reconcile_mismatches += 1
        RECONCILE_MISMATCHES.inc()

    def sample(self) -> dict:
        """The figures for this process's presence record; starts a new publish-lag window."""
        lag_avg = self._lag_sum / self._lag_count if self._lag_count else None
        figures = {
            "events": self.events,
            "frames": self.frames_sent,
            "gap_repairs": self.gap_repairs,
            "resets": self.resets,
            "reconcile_mismatches": self.reconcile_mismatches,
            "lag_avg": round(lag_avg, 4) if lag_avg is not None else None,
            "lag_max": round(self._lag_max, 4) if self._lag_count else None,
            "by_role": {role: n for role, n in self.connections.items() if n},
        }
        self._lag_sum, self._lag_count, self._lag_max = 0.0, 0, 0.0
        return figures


stats = ProcessStats()
