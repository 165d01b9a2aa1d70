"""Reads of chat: history pages, unread counts, the rooms and conversations a user has."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import Count, Q

from chat.access import STAFF, dm_stream, room_writers
from chat.models import ChatMessage, ChatRead
from core.access import Access, Role, access_for
from core.models import Center
from realtime.events import ChatMessageData
from realtime.outbox import format_ts
from realtime.streams import parse_stream

PAGE = 50  # messages shown on entering a room; older pages are as long
MAX_PAGE = 200


def message_data(message: ChatMessage) -> dict:
    """The `chat.message` event data of a stored message (protocol §4)."""
    return ChatMessageData(
        id=message.uuid,
        text=message.text,
        client_msg_id=message.client_msg_id,
        author_id=message.author_id,
        author_name=message.author_name,
        author_role=message.author_role or None,
        sent_at=message.sent_at,
    ).model_dump(mode="json")


def message_frame(message: ChatMessage) -> dict:
    """A stored message as the event frame that carried it (§3.3)."""
    return {
        "type": "event",
        "stream": message.stream,
        "seq": message.seq,
        "event": "chat.message",
        "ts": format_ts(message.sent_at),
        "data": message_data(message),
    }


def page_frames(stream: str, *, before: int | None, limit: int = PAGE) -> tuple[list[dict], bool]:
    """Up to `limit` messages of `stream` with seq < `before` (the latest without it), oldest first.

    Keyset pagination on (stream, seq), the unique index: a page costs the same however deep.
    The second value says whether older messages remain.
    """
    rows = ChatMessage.objects.filter(stream=stream)
    if before is not None:
        rows = rows.filter(seq__lt=before)
    page = list(rows.order_by("-seq")[: limit + 1])
    more = len(page) > limit
    return [message_frame(m) for m in reversed(page[:limit])], more


def unread_counts(user_id: int, streams: list[str]) -> dict[str, tuple[int, int]]:
    """stream -> (unread messages from others, last read seq), in two queries."""
    if not streams:
        return {}
    reads = dict(ChatRead.objects.filter(user_id=user_id, stream__in=streams).values_list("stream", "last_read_seq"))
    after_read = Q()
    for stream in streams:
        after_read |= Q(stream=stream, seq__gt=reads.get(stream, 0))
    counts = dict(
        ChatMessage.objects.filter(after_read)
        .exclude(author_id=user_id)
        .values("stream")
        .annotate(n=Count("id"))
        .values_list("stream", "n")
    )
    return {s: (counts.get(s, 0), reads.get(s, 0)) for s in streams}


def unread_count(user_id: int, stream: str) -> tuple[int, int]:
    return unread_counts(user_id, [stream])[stream]


def contacts(access: Access) -> list[dict]:
    """The users `access` may have a direct conversation with (`chat.access.may_converse`), by name.

    One query: the rule is spelled out as filters rather than checked user by user.
    """
    if access.role is None:
        return []
    hq = Q(is_superuser=True) | Q(staff__role=Role.HQ)
    if access.role == Role.RIDER:
        wanted = Q(staff__role=Role.DISPATCHER, staff__centers__code__in=access.centers)
    elif access.centers is None:  # HQ: every staff member
        wanted = hq | Q(staff__role__in=STAFF)
    else:
        wanted = hq | Q(staff__role__in=[Role.DISPATCHER, Role.CALLCENTER], staff__centers__code__in=access.centers)
        if access.role == Role.DISPATCHER:
            wanted |= Q(staff__role=Role.RIDER, rider__center__code__in=access.centers)
    rows = (
        get_user_model()
        .objects.filter(wanted, is_active=True)
        .exclude(pk=access.user_id)
        .values_list("pk", "first_name", "last_name", "username", "is_superuser", "staff__role")
        .distinct()
        .order_by("first_name", "last_name", "username")
    )
    return [
        {
            "id": pk,
            "name": f"{first} {last}".strip() or username,
            "role": str(Role.HQ) if superuser else role,
        }
        for pk, first, last, username, superuser, role in rows
    ]


def rooms_for(user) -> list[dict]:
    """The user's center rooms and direct conversations with their unread counts (GET /chat/rooms)."""
    access = access_for(user)
    if access.role is None:
        return []
    codes = access.center_codes()
    names = dict(Center.objects.filter(code__in=codes).values_list("code", "name"))
    rooms = [
        {
            "stream": f"chat:{code}",
            "kind": "center",
            "title": names.get(code, code),
            "can_write": room_writers(access, parse_stream(f"chat:{code}")),
            "peer": None,
        }
        for code in codes
    ]
    rooms += [
        {"stream": dm_stream(access.user_id, c["id"]), "kind": "direct", "title": c["name"], "can_write": True}
        | {"peer": c}
        for c in contacts(access)
    ]
    counts = unread_counts(access.user_id, [r["stream"] for r in rooms])
    for room in rooms:
        room["unread"], room["last_read"] = counts[room["stream"]]
    return rooms
