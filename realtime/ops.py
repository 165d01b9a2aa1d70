"""The ops monitor's figures (`/ops/`, HQ): read from presence, its samples, and two timed pings.

Everything comes from what processes already write into presence (realtime/presence.py): each
record's running totals and the last hour of samples. Rates (events per second) are differences
between a process's consecutive samples; "last hour" counts are a process's last sample minus its
first in the window, summed over processes (including ones that have gone since).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict

from django.conf import settings
from django.db import connection

from realtime.bus import REDIS_DOWN, RedisUnavailable, get_redis
from realtime.presence import SAMPLES_WINDOW, last_run_key, presence_snapshot, samples_key

CHART_BUCKETS = 60  # one per minute of the last hour
CHART_WIDTH, CHART_HEIGHT = 600, 100
COUNTED = ("events", "gap_repairs", "resets", "reconcile_mismatches")
TASKS_SHOWN = ("reconcile_streams", "sweep_outbox")


def _timed_ms(action) -> tuple[float | None, str | None]:
    """Milliseconds `action` took, or None and the error's name."""
    started = time.perf_counter()
    try:
        action()
    except Exception as exc:
        return None, type(exc).__name__
    return round((time.perf_counter() - started) * 1000, 2), None


def _postgres_ping() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _read_samples(now: float) -> dict[str, list[dict]]:
    """The last hour's samples, per process id, oldest first."""
    raw = get_redis().zrangebyscore(samples_key(), now - SAMPLES_WINDOW, "+inf")
    by_process: dict[str, list[dict]] = defaultdict(list)
    for member in raw:
        sample = json.loads(member)
        by_process[sample["p"]].append(sample)
    return by_process


def _rate(samples: list[dict], field: str) -> float | None:
    """Per-second rate of a running total between a process's last two samples that carry it."""
    counted = [s for s in samples if s.get(field) is not None]
    if len(counted) < 2 or counted[-1]["t"] <= counted[-2]["t"]:
        return None
    return max(0.0, (counted[-1][field] - counted[-2][field]) / (counted[-1]["t"] - counted[-2]["t"]))


def _window_count(samples: list[dict], field: str) -> int:
    counted = [s[field] for s in samples if s.get(field) is not None]
    return counted[-1] - counted[0] if len(counted) >= 2 else 0


def _chart(series: list[float | None]) -> dict:
    """SVG polyline points for one series over the buckets (gaps where nothing was sampled)."""
    values = [v for v in series if v is not None]
    top = max(values, default=0) or 1
    step = CHART_WIDTH / (len(series) - 1)
    segments, current = [], []
    for i, value in enumerate(series):
        if value is None:
            if current:
                segments.append(" ".join(current))
            current = []
            continue
        x, y = i * step, CHART_HEIGHT * (0.95 - 0.9 * value / top)  # a margin keeps 0 and the peak visible
        current.append(f"{x:.1f},{y:.1f}")
        if len(current) == 1:  # a lone point still shows, as a dot
            current.append(f"{x + 0.5:.1f},{y:.1f}")
    if current:
        segments.append(" ".join(current))
    return {"segments": segments, "max": max(values, default=0), "last": values[-1] if values else None}


def _charts(by_process: dict[str, list[dict]], now: float) -> dict:
    """Connections and events per second over the last hour, one point per minute, all processes summed."""
    start = now - SAMPLES_WINDOW
    width = SAMPLES_WINDOW / CHART_BUCKETS
    conns: list[dict[str, int]] = [{} for _ in range(CHART_BUCKETS)]
    rates: list[dict[str, list[float]]] = [defaultdict(list) for _ in range(CHART_BUCKETS)]
    for process_id, samples in by_process.items():
        previous = None
        for sample in samples:
            bucket = min(CHART_BUCKETS - 1, int((sample["t"] - start) // width))
            if bucket < 0 or sample.get("stopped"):
                previous = None
                continue
            conns[bucket][process_id] = sample.get("conns", 0)  # the bucket's last sample wins
            if previous is not None and sample.get("events") is not None and sample["t"] > previous["t"]:
                rate = (sample["events"] - previous["events"]) / (sample["t"] - previous["t"])
                rates[bucket][process_id].append(max(0.0, rate))
            previous = sample if sample.get("events") is not None else None
    connections = [sum(bucket.values()) if bucket else None for bucket in conns]
    events = [sum(sum(r) / len(r) for r in bucket.values()) if bucket else None for bucket in rates]
    return {"connections": _chart(connections), "events": _chart(events)}


def ops_snapshot() -> dict:
    """Every figure of the ops page, read now. Redis down: presence figures are None, pings still run."""
    now = time.time()
    redis_ms, redis_error = _timed_ms(lambda: get_redis().ping())
    postgres_ms, postgres_error = _timed_ms(_postgres_ping)
    snapshot = {
        "now": now,
        "redis": {"ms": redis_ms, "error": redis_error},
        "postgres": {"ms": postgres_ms, "error": postgres_error},
        "presence": None,
    }
    try:
        presence = presence_snapshot()
        by_process = _read_samples(now)
        last_runs = get_redis().mget([last_run_key(task) for task in TASKS_SHOWN])
    except (RedisUnavailable, *REDIS_DOWN):
        return snapshot
    late_after = 2 * settings.REALTIME_PRESENCE_HEARTBEAT + 1
    processes = []
    for process in presence["processes"]:
        samples = by_process.get(process["id"], [])
        t = process.get("t")
        processes.append(
            process
            | {
                "events_per_second": _rate(samples, "events"),
                "beat_age": now - t if t else None,
                "late": bool(t) and now - t > late_after,
            }
        )
    live_ids = {p["id"] for p in processes}
    silent = []
    for process_id, samples in by_process.items():
        last = samples[-1]
        if process_id not in live_ids and not last.get("stopped"):
            silent.append({"id": process_id, "kind": last.get("kind", "web"), "age": now - last["t"]})
    web = [p for p in processes if p["kind"] == "web"]
    lags = [p for p in web if p.get("lag_avg") is not None]
    snapshot["presence"] = presence
    snapshot |= {
        "processes": processes,
        "silent": sorted(silent, key=lambda s: s["age"]),
        "events_per_second": sum(p["events_per_second"] or 0 for p in web),
        "lag_avg": max((p["lag_avg"] for p in lags), default=None),
        "lag_max": max((p["lag_max"] for p in lags), default=None),
        "last_hour": {field: sum(_window_count(s, field) for s in by_process.values()) for field in COUNTED},
        "since_start": {field: sum(p.get(field) or 0 for p in web) for field in COUNTED},
        "workers": [p for p in processes if p["kind"] == "worker"],
        "beats": [p for p in processes if p["kind"] == "beat"],
        "last_run_ages": {
            task: now - float(value) if value is not None else None
            for task, value in zip(TASKS_SHOWN, last_runs, strict=True)
        },
        "charts": _charts(by_process, now),
    }
    return snapshot
