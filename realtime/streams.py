"""Stream names (`namespace:room`) and who may subscribe or publish (protocol §1–§2).

Which namespaces exist and their rules come from the stream-kind registry (`realtime.registry`):
`user:<id>` and `broadcast:all` are the protocol's own, registered by `realtime`; the domain apps
register theirs (`deliveries`, `orders`, `riders`, `positions`, `chat`) in `AppConfig.ready()`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.contrib.auth import get_user_model

from core.access import Access, Role, access_for, center_of_rider_user
from core.models import Center
from realtime import registry

ROOM_PATTERNS = {
    "center": re.compile(r"^[a-z0-9][a-z0-9-]{0,49}$"),
    "user": re.compile(r"^[1-9][0-9]{0,18}$"),
    "pair": re.compile(r"^([1-9][0-9]{0,18})-([1-9][0-9]{0,18})$"),
    "all": re.compile(r"^all$"),
}


class UnknownStream(ValueError):
    """The text is not a stream name of this protocol."""


@dataclass(frozen=True, slots=True)
class StreamName:
    namespace: str
    room: str

    def __str__(self) -> str:
        return f"{self.namespace}:{self.room}"

    @property
    def kind(self) -> registry.StreamKind:
        return registry.kind(self.namespace)

    @property
    def logged(self) -> bool:
        return self.kind.logged

    @property
    def center_code(self) -> str | None:
        return self.room if self.kind.rooms == "center" else None

    @property
    def user_ids(self) -> tuple[int, int] | None:
        """The two users of a pair room (`dm:3-7`), lower id first; None for other rooms."""
        if self.kind.rooms != "pair":
            return None
        low, high = self.room.split("-")
        return int(low), int(high)


def parse_stream(text: object) -> StreamName:
    """Return the stream named by `text`, or raise UnknownStream."""
    if not isinstance(text, str) or text.count(":") != 1:
        raise UnknownStream(text)
    namespace, room = text.split(":")
    kind = registry.kind(namespace)
    match = ROOM_PATTERNS[kind.rooms].match(room) if kind is not None else None
    if match is None or (kind.rooms == "pair" and int(match[1]) >= int(match[2])):
        raise UnknownStream(text)  # a pair is named once: the lower user id first
    return StreamName(namespace, room)


def stream_for_center(namespace: str, center_code: str) -> str:
    return f"{namespace}:{center_code}"


def stream_for_user(user_id: int) -> str:
    return f"user:{user_id}"


BROADCAST = "broadcast:all"


def can_subscribe(user, stream: StreamName) -> bool:
    """Protocol §2, 'may subscribe'. Unknown centers are simply refused like foreign ones."""
    access = access_for(user)
    return access.role is not None and stream.kind.may_subscribe(access, stream) and _exists_for(access, stream)


def can_publish(user, stream: StreamName) -> bool:
    """Protocol §2, 'may publish' (for users; tokens are checked by `core.access.token_allows`)."""
    access = access_for(user)
    return access.role is not None and stream.kind.may_publish(access, stream) and _exists_for(access, stream)


def stream_exists(stream: StreamName) -> bool:
    """Whether the stream's room is a real center or user (a stream row is never made for a typo)."""
    if stream.kind.rooms == "center":
        return Center.objects.filter(code=stream.room).exists()
    if stream.kind.rooms == "user":
        return get_user_model().objects.filter(pk=int(stream.room)).exists()
    if stream.kind.rooms == "pair":
        return get_user_model().objects.filter(pk__in=stream.user_ids).count() == 2
    return True


def subscribe_verdict(access: Access, stream: StreamName) -> bool | None:
    """`can_subscribe` answered from the Access alone, or None when that needs the database.

    The subscribe hot path (issue 13): a dispatcher's own center, a user's own stream, the
    broadcast — rules marked `registry.in_memory` on rooms known to exist — cost no thread hop.
    """
    if access.role is None:
        return False
    if not registry.decides_in_memory(stream.kind.may_subscribe):
        return None
    if not stream.kind.may_subscribe(access, stream):
        return False
    return True if _known_to_exist(access, stream) else None


def _known_to_exist(access: Access, stream: StreamName) -> bool:
    """Whether the room exists without asking the database.

    A dispatcher's or rider's centers and their own user id come from the database already, and
    `broadcast:all` always exists.
    """
    if stream.kind.rooms == "center" and access.centers is not None:
        return True
    if stream.kind.rooms == "user" and stream.room == str(access.user_id):
        return True
    return stream.kind.rooms == "all"


def _exists_for(access: Access, stream: StreamName) -> bool:
    """Rooms the rules admit only by name (HQ's "every center", another user's id) must exist.

    Those of `_known_to_exist`, the hot path, cost no query here.
    """
    return _known_to_exist(access, stream) or stream_exists(stream)


@registry.in_memory
def _own_or_hq(access: Access, stream: StreamName) -> bool:
    return access.role == Role.HQ or stream.room == str(access.user_id)


def _dispatcher_of_the_rider(access: Access, stream: StreamName) -> bool:
    """A dispatcher may message a rider of a center they dispatch."""
    if access.role != Role.DISPATCHER:
        return False
    center = center_of_rider_user(int(stream.room))
    return center is not None and access.serves(center)


@registry.in_memory
def _anyone(access: Access, stream: StreamName) -> bool:
    return True


@registry.in_memory
def _hq(access: Access, stream: StreamName) -> bool:
    return access.role == Role.HQ


USER = registry.StreamKind("user", rooms="user", may_subscribe=_own_or_hq, may_publish=_dispatcher_of_the_rider)
BROADCAST_KIND = registry.StreamKind("broadcast", rooms="all", may_subscribe=_anyone, may_publish=_hq)


def register_protocol_streams() -> None:
    """Register the streams every deployment has, whatever its domain apps (realtime's ready())."""
    registry.register(USER)
    registry.register(BROADCAST_KIND)
