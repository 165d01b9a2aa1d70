"""Publisher for the BROS variants: every event goes through the real outbox (`outbox.emit` in a
transaction, Redis PUBLISH on commit), one event per transaction or batched.

    DJANGO_SETTINGS_MODULE=bros.settings python bench/publish_bros.py

Commands as in `bench/pubcommon.py`, plus "mode":
- "outbox" (default, the honest path): per event, one `realtime.services.publish_event`
  (`broadcast:*`, `user:*`: its own transaction, Redis PUBLISH on commit) or, for streams whose
  namespace takes no client publishes (`deliveries:room-NNN` in the rooms scenario),
  `outbox.emit(build(stream, "notice", ...))` in its own transaction — the same code path the
  domain services use. Each event is a PostgreSQL transaction plus a PUBLISH.
- "batch": the same outbox, but every ~20 ms ONE transaction emits all the events due by then,
  and its on-commit publish sends them in one Redis pipeline (rate 0: all events in one
  transaction, i.e. one pipeline of PUBLISHes: the harshest burst). For rates the
  one-transaction-per-event publisher cannot reach on a busy 2-core machine.

  (A "pre-built rows, PUBLISH later" mode was tried first and dropped: the hub's heads check
  (every REALTIME_HEADS_INTERVAL) sees the committed-but-unpublished rows and delivers them from
  history before they are published, which is the hub doing its job, but it makes latency
  measured from the later PUBLISH meaningless, even negative.)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bros.settings")

import django

django.setup()

from django.db import transaction  # noqa: E402

from bench.pubcommon import Schedule, event_text, result, serve  # noqa: E402
from realtime import outbox  # noqa: E402
from realtime.events import NoticeData, build  # noqa: E402
from realtime.services import PUBLISHABLE, publish_event  # noqa: E402
from realtime.streams import parse_stream  # noqa: E402


def run_outbox(cmd: dict) -> dict:
    streams = [parse_stream(name) for name in cmd["rooms"]]
    via_service = [("notice" in PUBLISHABLE.get(s.namespace, ())) for s in streams]
    tag, pad, count = cmd["tag"], cmd.get("pad", 0), cmd["count"]
    schedule = Schedule(cmd.get("rate", 0))
    t_pub = []
    for n in range(count):
        schedule.wait(n)
        r = n % len(streams)
        t0 = time.time()
        text = event_text(tag, n, t0, pad)
        if via_service[r]:
            publish_event(actor=None, stream=streams[r], event="notice", data={"text": text})
        else:
            with transaction.atomic():
                outbox.emit([build(str(streams[r]), "notice", NoticeData(text=text))])
        t_pub.append(t0)
    return result(cmd, t_pub, schedule, mode="outbox")


def run_batch(cmd: dict) -> dict:
    """Batched outbox: every `tick` seconds, ONE transaction emits all events due by then; its
    on-commit publish sends them in one Redis pipeline. Rate 0: all events in one transaction."""
    names = [str(parse_stream(name)) for name in cmd["rooms"]]
    tag, pad, count = cmd["tag"], cmd.get("pad", 0), cmd["count"]
    rate = cmd.get("rate", 0)
    tick = cmd.get("tick", 0.02)
    schedule = Schedule(rate)
    t_pub: list[float] = []
    transactions = 0
    n = 0
    while n < count:
        if rate:
            schedule.wait(n)
            due = min(count, max(n + 1, int((time.time() - schedule.start) * rate) + 1))
        else:
            due = count
        t0 = time.time()
        with transaction.atomic():
            outbox.emit(
                [
                    build(names[i % len(names)], "notice", NoticeData(text=event_text(tag, i, t0, pad)))
                    for i in range(n, due)
                ]
            )
        transactions += 1
        t_pub.extend([t0] * (due - n))
        n = due
        if rate and n < count:
            time.sleep(max(0.0, min(tick, schedule.start + n / rate - time.time())))
    return result(cmd, t_pub, schedule, mode="batch", transactions=transactions)


def run_one(cmd: dict) -> dict:
    return run_batch(cmd) if cmd.get("mode") == "batch" else run_outbox(cmd)


if __name__ == "__main__":
    serve(run_one)
