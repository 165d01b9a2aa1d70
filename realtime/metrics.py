"""What the real-time path counts: Prometheus metrics and this process's figures for the ops monitor.

The hub and the consumer call `stats` at a few points: per event (once per process, however many
sockets follow the stream), per gap fill, per reset, per connect and disconnect, never per socket
per event. Per event it only adds to plain numbers (about a microsecond); the hub hands them to
Prometheus once a second (`flush`: in multi-process mode each metric write is a locked file write,
and a histogram observation costs three). The same running totals go into this process's presence
record for `/ops/` (`ProcessStats.sample`). Rare things (connects, fills, resets) count at once.

Publish lag is measured from an event's `ts` (taken in the command's transaction, just before its
commit) to the moment the hub hands the frame to its local sockets.
"""

from __future__ import annotations

import bisect
import time
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
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PUBLISH_LAG = Histogram(
    "bros_publish_lag_seconds", "From an event's commit to its hub handing it to the sockets.", buckets=LAG_BUCKETS
)
GAP_REPAIRS = PromCounter("bros_gap_repairs", "Gaps in a stream's seqs that a hub filled from history.")
RESETS = PromCounter(
    "bros_resets", "Reset frames sent: per feed (history_reset) or per subscriber (history_expired).", ["reason"]
)
RECONCILE_MISMATCHES = PromCounter(
    "bros_reconcile_mismatches", "Reconcile frames that found a hub behind its stream's head."
)

_TS_MARK = ',"ts":"'
_TS_LENGTH = len("2026-01-01T00:00:00.000Z")


_second_cache: dict[str, float] = {}


def event_time(frame: str) -> float | None:
    """The `ts` of an encoded event frame as a Unix time (None if it has none).

    `outbox.encode_frame` writes `ts` right after the short `type`, `stream`, `seq` and `event`
    fields, so a `find` near the start of the text is enough: the frame is not decoded. Events come
    in bursts within the same second, so the whole-second part is parsed once and remembered.
    """
    start = frame.find(_TS_MARK, 0, 200)
    if start < 0:
        return None
    start += len(_TS_MARK)
    ts = frame[start : start + _TS_LENGTH]
    second = ts[:19]
    try:
        base = _second_cache.get(second)
        if base is None:
            base = datetime.fromisoformat(second + "+00:00").timestamp()
            if len(_second_cache) > 64:
                _second_cache.clear()
            _second_cache[second] = base
        return base + int(ts[20:23]) / 1000
    except ValueError:
        return None


def _observe_many(histogram: Histogram, bucket_counts: list[int], total: float) -> None:
    """Add a batch of observations to a histogram: its bucket counts and the sum of their values.

    prometheus-client observes one value at a time; this writes each bucket once per batch instead,
    through the histogram's own value objects (pinned version; test_metrics checks the result).
    """
    for value, count in zip(histogram._buckets, bucket_counts, strict=True):
        if count:
            value.inc(count)
    histogram._sum.inc(total)


class ProcessStats:
    """This process's running totals since it started, and its publish lag since the last sample."""

    def __init__(self) -> None:
        self.events = 0
        self.frames_sent = 0
        self.gap_repairs = 0
        self.resets = 0
        self.reconcile_mismatches = 0
        self._lag_sum = 0.0
        self._lag_count = 0
        self._lag_max = 0.0
        # Not yet handed to Prometheus (flush): counts and the publish lags' buckets and sum.
        self._flushed_events = 0
        self._flushed_frames = 0
        self._lag_buckets = [0] * (len(LAG_BUCKETS) + 1)  # the last one is +Inf
        self._lag_pending_sum = 0.0

    def connected(self, role: str | None) -> None:
        CONNECTIONS.labels(role or "none").inc()

    def disconnected(self, role: str | None) -> None:
        CONNECTIONS.labels(role or "none").dec()

    def delivered(self, frame: str, subscribers: int, *, logged: bool, now: float | None = None) -> None:
        """One frame went to `subscribers` local sockets; a logged event also has its lag measured."""
        self.frames_sent += subscribers
        if not logged:
            return
        self.events += 1
        committed = event_time(frame)
        if committed is not None:
            lag = max(0.0, (now or time.time()) - committed)
            self._lag_buckets[bisect.bisect_left(LAG_BUCKETS, lag)] += 1
            self._lag_pending_sum += lag
            self._lag_sum += lag
            self._lag_count += 1
            if lag > self._lag_max:
                self._lag_max = lag

    def flush(self) -> None:
        """Hand what was counted per event since the last flush to Prometheus (the hub: every second)."""
        events, frames = self.events, self.frames_sent
        if events > self._flushed_events:
            EVENTS.inc(events - self._flushed_events)
        if frames > self._flushed_frames:
            FRAMES_SENT.inc(frames - self._flushed_frames)
        self._flushed_events, self._flushed_frames = events, frames
        if any(self._lag_buckets):
            buckets, total = self._lag_buckets, self._lag_pending_sum
            self._lag_buckets, self._lag_pending_sum = [0] * len(buckets), 0.0
            _observe_many(PUBLISH_LAG, buckets, total)

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
        }
        self._lag_sum, self._lag_count, self._lag_max = 0.0, 0, 0.0
        return figures


stats = ProcessStats()
