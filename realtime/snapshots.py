"""A stream's current state read together with its head in one database snapshot (protocol §4).

A client loads a snapshot, then applies events with `seq > head`: because state and head come
from one REPEATABLE READ snapshot, no event is both in the state and after the head, or in neither.
The same consistency serves the reconciliation frames.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connection, transaction

from realtime import outbox
from realtime.models import Event
from realtime.streams import StreamName

RECENT_EVENTS = 100


@dataclass(frozen=True)
class Snapshot:
    stream: str
    epoch: str | None
    head: int | None
    items: list[dict]


def _recent_event_items(stream: str) -> list[dict]:
    """Streams without entity state (chat, user, broadcast): their latest events, oldest first."""
    events = list(Event.objects.filter(stream=stream).order_by("-seq")[:RECENT_EVENTS])
    return [outbox.frame_dict(e) for e in reversed(events)]


def in_one_snapshot(read):
    """Run `read()` in a REPEATABLE READ transaction: every query sees the same committed state.

    Inside a transaction that already ran a query the isolation level is fixed; then `read()`
    runs in that transaction (requests and tasks never open one around this; tests do).
    """
    if connection.in_atomic_block:
        return read()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        return read()


def read_snapshot(stream: StreamName) -> Snapshot:
    """The stream's items (its kind's snapshot, or its latest events) with its head, consistently."""
    name, kind = str(stream), stream.kind
    if not stream.logged:
        return Snapshot(name, None, None, kind.snapshot(stream.room) if kind.snapshot else [])

    # Create the counter row first: inserting it inside the REPEATABLE READ snapshot would fail
    # to serialize if the stream's first event committed meanwhile.
    outbox.stream_position(name)

    def read():
        epoch, head = outbox.stream_position(name)
        items = kind.snapshot(stream.room) if kind.snapshot else _recent_event_items(name)
        return Snapshot(name, epoch, head, items)

    return in_one_snapshot(read)
