"""Outgoing webhooks: outbox events POSTed, signed, to the URLs an admin registered.

The command path does nothing for webhooks. `dispatch_new_events` (Celery beat, every 2 s) reads
the events committed since its per-stream cursors in one query per batch and writes one
`WebhookDelivery` per matching webhook; `send_delivery` (a Celery task per delivery) POSTs it and
says when to try again: exponential back-off until a 2xx or `max_attempts`. Delivery is
at-least-once: a retry, a "send again" or a worker lost mid-request can repeat a delivery, and the
receiver de-duplicates by its `X-Bros-Delivery` id (protocol.md §7).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from realtime import registry
from realtime.models import Event, Stream, Webhook, WebhookCursor, WebhookDelivery, validate_webhook_url
from realtime.outbox import format_ts

logger = logging.getLogger(__name__)

HEADER_DELIVERY = "X-Bros-Delivery"
HEADER_EVENT = "X-Bros-Event"
HEADER_TIMESTAMP = "X-Bros-Timestamp"
HEADER_SIGNATURE = "X-Bros-Signature"
USER_AGENT = "BROS-Webhooks/1"

# Only one dispatcher at a time: a second overlapping run would write the same deliveries.
_DISPATCH_LOCK = 0x62726F73_7768  # "bros" "wh"
_MAX_ERROR = 500
_MAX_RESPONSE_READ = 1024

_CURSOR_TABLE = WebhookCursor._meta.db_table
_STREAM_TABLE = Stream._meta.db_table
_EVENT_TABLE = Event._meta.db_table

# A stream seen for the first time starts at 0: all its events are new.
_ADD_NEW_STREAMS = f"""
    INSERT INTO {_CURSOR_TABLE} (stream, seq)
    SELECT name, 0 FROM {_STREAM_TABLE} ON CONFLICT (stream) DO NOTHING
"""
# With no webhook to feed, the cursors follow the heads: nothing is owed to a webhook added later.
_FOLLOW_HEADS = f"""
    INSERT INTO {_CURSOR_TABLE} (stream, seq)
    SELECT name, head FROM {_STREAM_TABLE}
    ON CONFLICT (stream) DO UPDATE SET seq = EXCLUDED.seq WHERE {_CURSOR_TABLE}.seq < EXCLUDED.seq
"""
# Per stream the committed events are always a prefix of its seqs (outbox.emit), so "after the
# cursor" never skips an event that commits later. Only streams whose head passed their cursor are
# read, each by a range of the (stream, seq) index, so the cost follows the new events, not the
# history. Taking the lowest ids of those prefixes keeps a prefix of each stream.
_NEW_EVENTS = f"""
    SELECT e.id, e.stream, e.seq, e.name, e.data, e.ts
    FROM {_CURSOR_TABLE} c
    JOIN {_STREAM_TABLE} s ON s.name = c.stream AND s.head > c.seq
    CROSS JOIN LATERAL (
        SELECT * FROM {_EVENT_TABLE} e WHERE e.stream = c.stream AND e.seq > c.seq ORDER BY e.seq LIMIT %s
    ) e
    ORDER BY e.id LIMIT %s
"""
_ADVANCE = f"""
    UPDATE {_CURSOR_TABLE} c SET seq = v.seq
    FROM (SELECT unnest(%s::text[]) AS stream, unnest(%s::bigint[]) AS seq) v
    WHERE c.stream = v.stream AND c.seq < v.seq
"""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `X-Bros-Signature` value: HMAC-SHA256 with the secret over `<timestamp>.<body>`."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def backoff(attempts: int) -> float:
    """Seconds to wait after the `attempts`-th failed attempt: doubling from the base, capped."""
    return min(settings.WEBHOOK_RETRY_MAX, settings.WEBHOOK_RETRY_BASE * 2 ** (attempts - 1))


def event_center(stream: str, data: object) -> str | None:
    """The center an event belongs to: its stream's room, else the entity's (`user:` streams)."""
    namespace, _, room = stream.partition(":")
    kind = registry.kind(namespace)
    if kind is not None and kind.rooms == "center":
        return room
    if isinstance(data, dict):
        for entity in (data, data.get("delivery")):
            if isinstance(entity, dict) and isinstance(entity.get("center"), str):
                return entity["center"]
    return None


def delivery_body(delivery: WebhookDelivery, event: Event) -> str:
    """The JSON POSTed for an event: the event frame's fields plus the delivery id."""
    body = {
        "delivery": str(delivery.delivery_id),
        "event": event.name,
        "stream": event.stream,
        "seq": event.seq,
        "ts": format_ts(event.ts),
        "data": event.data,
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def _wants(webhook: Webhook, centers: set[str], event: Event) -> bool:
    if event.name not in webhook.event_types or event.ts < webhook.created_at:
        return False
    return not centers or event_center(event.stream, event.data) in centers


@dataclass(frozen=True)
class Dispatched:
    """What one dispatch batch did: the deliveries to send, and whether the batch was full."""

    deliveries: list[int]
    more: bool = False


def dispatch_new_events(*, batch: int = 500) -> Dispatched:
    """Write a delivery for each new event and each active webhook that wants it.

    One batch in one transaction: the events read, the deliveries and the advanced cursors commit
    together, so a crash repeats the batch, never loses it. A concurrent run returns at once.
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_DISPATCH_LOCK])
        if not cursor.fetchone()[0]:
            return Dispatched([])
        webhooks = list(Webhook.objects.filter(active=True).prefetch_related("centers"))
        if not webhooks:
            cursor.execute(_FOLLOW_HEADS)
            return Dispatched([])
        cursor.execute(_ADD_NEW_STREAMS)
        events = list(Event.objects.raw(_NEW_EVENTS, [batch, batch]))
        if not events:
            return Dispatched([])
        filters = [(webhook, {center.code for center in webhook.centers.all()}) for webhook in webhooks]
        now = timezone.now()
        deliveries, last_seq = [], {}
        for event in events:
            last_seq[event.stream] = max(event.seq, last_seq.get(event.stream, 0))
            for webhook, centers in filters:
                if _wants(webhook, centers, event):
                    delivery = WebhookDelivery(
                        webhook=webhook,
                        event_id=event.id,
                        stream=event.stream,
                        seq=event.seq,
                        event=event.name,
                        max_attempts=settings.WEBHOOK_MAX_ATTEMPTS,
                        next_attempt_at=now,
                        created_at=now,
                    )
                    delivery.body = delivery_body(delivery, event)
                    deliveries.append(delivery)
        WebhookDelivery.objects.bulk_create(deliveries)
        cursor.execute(_ADVANCE, [list(last_seq), list(last_seq.values())])
    return Dispatched([delivery.pk for delivery in deliveries], more=len(events) == batch)


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """POST once, following no redirect; return the status and the start of the response body."""
    validate_webhook_url(url)
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    client = connection_class(parts.hostname, parts.port, timeout=settings.WEBHOOK_TIMEOUT)
    try:
        client.request("POST", target, body=body, headers=headers)
        response = client.getresponse()
        text = response.read(_MAX_RESPONSE_READ).decode(errors="replace")
        if 300 <= response.status < 400:
            text = f"Redirect to {response.getheader('Location', '?')} not followed."
        return response.status, text
    finally:
        client.close()


def _claim(delivery_pk: int) -> WebhookDelivery | None:
    """Take a due delivery for one attempt, or None if it is not due (sent, leased or paused).

    The claim leases it past the request's timeout, so the retry sweep leaves it alone meanwhile
    and retries it if this worker dies mid-request.
    """
    now = timezone.now()
    lease = timedelta(seconds=2 * settings.WEBHOOK_TIMEOUT + 30)
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_pk,
        status=WebhookDelivery.Status.PENDING,
        next_attempt_at__lte=now,
        webhook__active=True,
    ).update(attempts=F("attempts") + 1, last_attempt_at=now, next_attempt_at=now + lease)
    if not claimed:
        return None
    return WebhookDelivery.objects.select_related("webhook").get(pk=delivery_pk)


def send_delivery(delivery_pk: int) -> float | None:
    """Make one attempt at a due delivery and record it; return the seconds until the next, if any."""
    delivery = _claim(delivery_pk)
    if delivery is None:
        return None
    body = delivery.body.encode()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        HEADER_DELIVERY: str(delivery.delivery_id),
        HEADER_EVENT: delivery.event,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: sign(delivery.webhook.secret, timestamp, body),
    }
    status, error = None, ""
    try:
        status, text = _post(delivery.webhook.url, body, headers)
        if not 200 <= status < 300:
            error = f"HTTP {status}: {text}".strip()
    # ValueError: a URL that no longer parses (a bad port, a host IDNA refuses) is a failed attempt too.
    except (OSError, http.client.HTTPException, ValidationError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    now = timezone.now()
    update = {"last_status_code": status, "last_error": error[:_MAX_ERROR], "next_attempt_at": None}
    retry_in = None
    if not error:
        update |= {"status": WebhookDelivery.Status.DELIVERED, "delivered_at": now}
    elif delivery.attempts >= delivery.max_attempts:
        update["status"] = WebhookDelivery.Status.FAILED
        logger.warning("webhook %s: gave up on %s after %d attempts", delivery.webhook, delivery, delivery.attempts)
    else:
        retry_in = backoff(delivery.attempts)
        update["next_attempt_at"] = now + timedelta(seconds=retry_in)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(**update)
    return retry_in


def overdue_deliveries(*, grace: timedelta = timedelta(seconds=30), limit: int = 500) -> list[int]:
    """Pending deliveries whose attempt is overdue (a lost task, a dead worker): the retry sweep."""
    return list(
        WebhookDelivery.objects.filter(
            status=WebhookDelivery.Status.PENDING,
            next_attempt_at__lte=timezone.now() - grace,
            webhook__active=True,
        )
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )


def can_resend(actor) -> bool:
    return actor is not None and actor.is_active and actor.has_perm("realtime.change_webhookdelivery")


@transaction.atomic
def resend_deliveries(*, actor, delivery_ids: list[int]) -> list[int]:
    """Send deliveries again now, with a fresh allowance of attempts; return the ids to send.

    The delivery id stays the same: a receiver that already has it ignores the repeat. Deliveries
    of an inactive webhook are left as they are (nothing would send them).
    """
    if not can_resend(actor):
        raise PermissionDenied("You may not resend webhook deliveries.")
    ids = list(
        WebhookDelivery.objects.select_for_update(of=("self",))
        .filter(pk__in=delivery_ids, webhook__active=True)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    WebhookDelivery.objects.filter(pk__in=ids).update(
        status=WebhookDelivery.Status.PENDING,
        next_attempt_at=timezone.now(),
        max_attempts=F("attempts") + settings.WEBHOOK_MAX_ATTEMPTS,
    )
    return ids


def prune_log(*, before, batch: int = 5000) -> int:
    """Delete delivered and given-up deliveries created before `before`; pending ones stay."""
    finished = [WebhookDelivery.Status.DELIVERED, WebhookDelivery.Status.FAILED]
    deleted = 0
    while True:
        ids = list(
            WebhookDelivery.objects.filter(status__in=finished, created_at__lt=before)
            .order_by("id")
            .values_list("id", flat=True)[:batch]
        )
        if not ids:
            return deleted
        deleted += WebhookDelivery.objects.filter(pk__in=ids).delete()[0]
