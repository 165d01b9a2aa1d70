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

from core.access import access_for
from realtime.events import ChatMessageData, NoticeData, build
from realtime.models import Event
from realtime.outbox import emit
from realtime.streams import StreamName, stream_exists

PUBLISHABLE: dict[str, frozenset[str]] = {
    "chat": frozenset({"chat.message"}),
    "orders": frozenset({"order.notice"}),
    "user": frozenset({"notice", "chat.message"}),
    "dm": frozenset({"chat.message"}),
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
    if stream.kind.publish is not None:  # the owning app stores it (chat) and emits in this transaction
        return stream.kind.publish(actor=actor, stream=stream, event=event, data=data, via=via)
    if event == "chat.message":
        payload = chat_message_data(actor=actor, data=data, via=via)
    else:
        try:
            payload = NoticeData.model_validate(data)
        except SchemaError as exc:
            raise NotPublishable(_problems(exc)) from None
    (row,) = emit([build(str(stream), event, payload)])
    return row


def _problems(exc: SchemaError) -> str:
    return "Invalid data: " + "; ".join(f"{'.'.join(map(str, e['loc'])) or 'data'}: {e['msg']}" for e in exc.errors())


def chat_message_data(*, actor, data: dict, via: str = "", sent_at=None) -> ChatMessageData:
    """A client's chat message (`text`, `client_msg_id`) with what the server adds, or NotPublishable."""
    try:
        return ChatMessageData(
            id=uuid.uuid4().hex,
            text=data.get("text"),
            client_msg_id=data.get("client_msg_id"),
            sent_at=sent_at or timezone.now(),
            author_role=access_for(actor).role if actor is not None else None,
            **_author_of(actor, via),
        )
    except SchemaError as exc:
        raise NotPublishable(_problems(exc)) from None
