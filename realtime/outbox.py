"""The outbox: events enter their stream's history in the command's transaction, then get published.

`emit` assigns each event the next seq of its stream by bumping the stream's counter row with an
upsert. That row stays locked until the transaction ends, so per stream the seqs are gapless (a
rollback undoes the bump together with the change) and commit order equals seq order (a writer
can only take k+1 once the holder of k has committed). Counter rows are locked in stream-name
order, so two commands touching the same streams cannot deadlock each other.

Publishing happens after commit; a publish lost to a crash or a Redis outage is picked up by
`republish_unpublished` (Celery beat), and live connections fill any gap from history anyway.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from realtime.bus import REDIS_DOWN, channel_for, get_redis, message_for, redis_health
from realtime.events import PendingEvent
from realtime.faults import bus_faults
from realtime.models import Event, Stream, new_epoch

logger = logging.getLogger(__name__)

# One round trip for all of a command's events: bump each stream's counter row (in stream-name
# order, the order of the arrays), then insert the events with the seqs those bumps reserved.
_EMIT = f"""
    WITH heads AS (
        INSERT INTO {Stream._meta.db_table} AS s (name, epoch, head)
        SELECT * FROM unnest(%(streams)s::varchar[], %(epochs)s::varchar[], %(counts)s::bigint[])
        ON CONFLICT (name) DO UPDATE SET head = s.head + EXCLUDED.head
        RETURNING s.name, s.head
    )
    INSERT INTO {Event._meta.db_table} (stream, seq, name, data, ts)
    SELECT e.stream, h.head - e.after, e.name, e.data, %(ts)s
    FROM unnest(%(event_streams)s::varchar[], %(names)s::varchar[], %(data)s::jsonb[], %(after)s::bigint[])
        WITH ORDINALITY AS e(stream, name, data, after, n)
    JOIN heads h ON h.name = e.stream
    ORDER BY e.n
    RETURNING id, stream, seq
"""


_MARK_PUBLISHED = f"UPDATE {Event._meta.db_table} SET published_at = %s WHERE id = ANY(%s)"


def emit(events: Sequence[PendingEvent]) -> list[Event]:
    """Append `events` to their streams in the current transaction and publish them on commit."""
    connection = transaction.get_connection()
    if not connection.in_atomic_block:
        raise RuntimeError("emit() must run inside the transaction of the change it describes")
    if not events:
        return []
    counts = Counter(event.stream for event in events)
    streams = sorted(counts)
    # Each event's distance from its stream's new head: the last event of a stream gets the head.
    after, left = [], Counter(counts)
    for event in events:
        left[event.stream] -= 1
        after.append(left[event.stream])
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            _EMIT,
            {
                "streams": streams,
                "epochs": [new_epoch() for _ in streams],
                "counts": [counts[stream] for stream in streams],
                "event_streams": [e.stream for e in events],
                "names": [e.name for e in events],
                "data": [json.dumps(e.data) for e in events],
                "after": after,
                "ts": now,
            },
        )
        ids, heads = {}, {}
        for pk, stream, seq in cursor.fetchall():
            ids[stream, seq] = pk
            heads[stream] = max(seq, heads.get(stream, seq))
    rows = []
    for event, distance in zip(events, after, strict=True):
        seq = heads[event.stream] - distance  # as the statement computed it
        rows.append(
            Event(pk=ids[event.stream, seq], stream=event.stream, seq=seq, name=event.name, data=event.data, ts=now)
        )
    transaction.on_commit(lambda: publish(rows), robust=True)
    return rows


def format_ts(ts: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a Z, as in protocol examples."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def encode_frame(event: Event) -> str:
    """Return the `event` frame of protocol §3, encoded once for every subscriber."""
    frame = {
        "type": "event",
        "stream": event.stream,
        "seq": event.seq,
        "event": event.name,
        "ts": format_ts(event.ts),
        "data": event.data,
    }
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


def publish(events: Sequence[Event]) -> bool:
    """Publish committed events to the bus and mark them published. Never raises.

    A failure leaves the events unpublished for the sweep; subscribers fill gaps from history.
    An unreachable Redis is logged once per outage (`redis_health`), not once per publish.
    """
    if not events:
        return True
    faults = bus_faults()  # None except in the chaos suite's server processes
    if faults:
        faults.before_publish()
    try:
        pipe = get_redis().pipeline(transaction=False)
        for event in events:
            channel, message = channel_for(event.stream), message_for(event.seq, encode_frame(event))
            if faults:
                faults.publish(pipe, channel, message)
            else:
                pipe.publish(channel, message)
        pipe.execute()
        redis_health.up()
        with connection.cursor() as cursor:
            cursor.execute(_MARK_PUBLISHED, [timezone.now(), [e.pk for e in events]])
    except REDIS_DOWN as exc:
        redis_health.down(exc)
        return False
    except Exception:
        logger.exception("publishing %d event(s) failed; the outbox sweep will retry", len(events))
        return False
    return True


def republish_unpublished(*, older_than: timedelta = timedelta(seconds=5), limit: int = 1000) -> int:
    """Publish events committed more than `older_than` ago but never published; return how many.

    Rows are claimed with SKIP LOCKED, so overlapping sweeps (or several beats) are harmless.
    """
    cutoff = timezone.now() - older_than
    with transaction.atomic():
        events = list(
            Event.objects.select_for_update(skip_locked=True)
            .filter(published_at__isnull=True, ts__lt=cutoff)
            .order_by("id")[:limit]
        )
        if events and not publish(events):
            return 0
    return len(events)


def prune_history(*, before: datetime, batch: int = 5000) -> int:
    """Delete events older than `before` in batches; stream heads are kept. Return how many."""
    deleted = 0
    while True:
        ids = list(Event.objects.filter(ts__lt=before).order_by("id").values_list("id", flat=True)[:batch])
        if not ids:
            return deleted
        deleted += Event.objects.filter(pk__in=ids).delete()[0]


_ENSURE_STREAM = f"""
    INSERT INTO {Stream._meta.db_table} (name, epoch, head) VALUES (%s, %s, 0)
    ON CONFLICT (name) DO NOTHING
"""


def stream_position(stream: str) -> tuple[str, int]:
    """Return the stream's (epoch, head), creating its counter row if nothing was written yet."""
    row = Stream.objects.filter(name=stream).values_list("epoch", "head").first()
    if row is None:
        with connection.cursor() as cursor:
            cursor.execute(_ENSURE_STREAM, [stream, new_epoch()])
        row = Stream.objects.filter(name=stream).values_list("epoch", "head").get()
    return row


def stream_positions(streams: Sequence[str]) -> dict[str, tuple[str, int]]:
    """Current (epoch, head) of several streams in one query (absent streams are left out)."""
    rows = Stream.objects.filter(name__in=list(streams)).values_list("name", "epoch", "head")
    return {name: (epoch, head) for name, epoch, head in rows}


def stream_heads(streams: Sequence[str]) -> dict[str, int]:
    """Current heads of several streams in one query (absent streams are left out)."""
    return {name: head for name, (_, head) in stream_positions(streams).items()}


@dataclass(frozen=True)
class History:
    """What a client that last applied `since` must know: the events after it, or that it must reset."""

    stream: str
    epoch: str
    head: int
    events: list[Event]
    reset: bool

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else self.head


def read_history(stream: str, *, since: int | None, epoch: str | None, limit: int = 500) -> History:
    """Return up to `limit` events after `since`, or `reset=True` if they can't be given exactly.

    Reset when the epoch differs, `since` is beyond the head, or history no longer holds
    `since + 1`. This one function serves the WebSocket replay and the HTTP events endpoint.
    """
    current_epoch, head = stream_position(stream)
    if since is None or epoch != current_epoch or since > head:
        return History(stream, current_epoch, head, [], reset=since is not None)
    events = list(Event.objects.filter(stream=stream, seq__gt=since).order_by("seq")[:limit])
    expected_first = since + 1
    if since < head and (not events or events[0].seq != expected_first):
        return History(stream, current_epoch, head, [], reset=True)
    # Events committed after the head was read may be included: report the head they reach.
    head = max(head, events[-1].seq) if events else head
    return History(stream, current_epoch, head, events, reset=False)


def frame_dict(event: Event) -> dict:
    """The event as the protocol object (the HTTP form of `encode_frame`)."""
    return json.loads(encode_frame(event))
