"""Chat commands: post a message (stored with its event in one transaction), mark a stream read.

`post_message` is the `publish` hook of the `chat` and `dm` stream kinds: a `publish` frame, an
HTTP `POST /publish` and tests all come through it, after `realtime.services.publish_event` has
checked that the event is publishable there. A message is a row here and an event in the outbox,
committed together: while Redis is down it is stored all the same and the outbox sweep delivers it.
"""

from __future__ import annotations

from datetime import timedelta

from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.utils import timezone

from chat import selectors
from chat.models import ChatMessage, ChatRead
from realtime.events import ChatUnreadData, build
from realtime.models import Event
from realtime.outbox import emit, stream_position
from realtime.services import NotPublishable, chat_message_data
from realtime.streams import StreamName, can_publish, can_subscribe, stream_for_user


def _event_of(message: ChatMessage) -> Event:
    """What publishers answer (the ack's stream and seq) for a message stored earlier."""
    return Event(stream=message.stream, seq=message.seq, name="chat.message", data=selectors.message_data(message))


@transaction.atomic
def post_message(*, actor, stream: StreamName, event: str, data: dict, via: str = "") -> Event:
    """Store a chat message and emit its `chat.message` (and the recipient's `chat.unread` for a `dm`).

    `actor` is the user (None for an API token, whose scope the API checked). A retry with the same
    `client_msg_id` by the same author on the same stream returns the first message's event and
    changes nothing, also when the two race.
    """
    if event != "chat.message" or stream.namespace not in ("chat", "dm"):
        raise NotPublishable(f"{event!r} cannot be published to {stream}.")
    if actor is not None and not can_publish(actor, stream):
        raise PermissionDenied("not allowed")
    if stream.namespace == "dm" and actor is None:
        raise NotPublishable("Direct conversations are between users.")
    name = str(stream)
    payload = chat_message_data(actor=actor, data=data, via=via)
    if actor is not None and payload.client_msg_id is not None:
        earlier = ChatMessage.objects.filter(author=actor, stream=name, client_msg_id=payload.client_msg_id).first()
        if earlier is not None:
            return _event_of(earlier)
    try:
        with transaction.atomic():  # a racing retry fails the unique index once the first commits
            (row,) = emit([build(name, "chat.message", payload)])
            ChatMessage.objects.create(
                uuid=payload.id,
                stream=name,
                seq=row.seq,
                author=actor,
                author_name=payload.author_name,
                author_role=payload.author_role or "",
                text=payload.text,
                client_msg_id=payload.client_msg_id,
                sent_at=payload.sent_at,
            )
    except IntegrityError:
        earlier = ChatMessage.objects.filter(author=actor, stream=name, client_msg_id=payload.client_msg_id).first()
        if earlier is None:
            raise
        return _event_of(earlier)
    if stream.namespace == "dm":
        low, high = stream.user_ids
        recipient = high if actor.pk == low else low
        _emit_unread(recipient, name)
    return row


def _emit_unread(user_id: int, stream: str) -> int:
    unread, last_read = selectors.unread_count(user_id, stream)
    data = ChatUnreadData(stream=stream, unread=unread, last_read=last_read)
    emit([build(stream_for_user(user_id), "chat.unread", data)])
    return unread


@transaction.atomic
def mark_read(*, user, stream: StreamName, seq: int) -> tuple[int, int]:
    """Record that `user` read `stream` up to `seq` (never backwards); return (unread, last read).

    The user's other tabs learn it from `chat.unread` on `user:<id>`, emitted in this transaction
    when the read position moved.
    """
    if stream.namespace not in ("chat", "dm") or not can_subscribe(user, stream):
        raise PermissionDenied("not allowed")
    name = str(stream)
    _, head = stream_position(name)
    seq = max(0, min(seq, head))
    read, _ = ChatRead.objects.select_for_update().get_or_create(user=user, stream=name)
    if seq <= read.last_read_seq:
        return selectors.unread_count(user.pk, name)
    read.last_read_seq = seq
    read.save(update_fields=["last_read_seq"])
    unread = _emit_unread(user.pk, name)
    return unread, seq


def prune_messages(*, older_than_days: int | None) -> int:
    """Delete messages older than the chat retention (None: keep everything); return how many."""
    if older_than_days is None:
        return 0
    cutoff = timezone.now() - timedelta(days=older_than_days)
    return ChatMessage.objects.filter(sent_at__lt=cutoff).delete()[0]
