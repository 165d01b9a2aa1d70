"""Publishing events that are not domain state changes: chat messages, notices (protocol §3 `publish`, §4).

Domain events (`delivery.*`, `order.created`, …) are emitted only by the domain services; a
client or integration can publish only the events listed in `PUBLISHABLE`, with data checked
against their schemas. Callers authorize first (`streams.can_publish` or the token's scope).
"""

from __future__ import annotations

import uuid

from django.db import transaction
from django.utils import timezone
from pydantic import ValidationError as SchemaError

from realtime.events import ChatMessageData, NoticeData, build
from realtime.models import Event
from realtime.outbox import emit
from realtime.streams import StreamName, stream_exists

PUBLISHABLE: dict[str, frozenset[str]] = {
    "chat": frozenset({"chat.message"}),
    "orders": frozenset({"order.notice"}),
    "user": frozenset({"notice", "chat.message"}),
    "broadcast": frozenset({"notice"}),
}


class NotPublishable(ValueError):
    """The event cannot be published to that stream, or its data does not fit its schema."""


def _author_of(actor, via: str) -> dict:
    if actor is None:
        return {"author_id": None, "author_name": via or "system"}
    return {"author_id": actor.pk, "author_name": (actor.get_full_name() or actor.get_username())[:150]}


@transaction.atomic
def publish_event(*, actor, stream: StreamName, event: str, data: dict, via: str = "") -> Event:
    """Log `event` on `stream` and publish it on commit; return the stored event (with its seq)."""
    if not stream.logged or event not in PUBLISHABLE.get(stream.namespace, ()):
        raise NotPublishable(f"{event!r} cannot be published to {stream}.")
    if not stream_exists(stream):  # token scopes like "chat:*" name no particular center
        raise NotPublishable(f"No such stream: {stream}.")
    try:
        if event == "chat.message":
            payload = ChatMessageData(
                id=uuid.uuid4().hex,
                text=data.get("text"),
                client_msg_id=data.get("client_msg_id"),
                sent_at=timezone.now(),
                **_author_of(actor, via),
            )
        else:
            payload = NoticeData.model_validate(data)
    except SchemaError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'data'}: {e['msg']}" for e in exc.errors())
        raise NotPublishable(f"Invalid data: {problems}") from None
    (row,) = emit([build(str(stream), event, payload)])
    return row
