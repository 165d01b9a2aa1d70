"""Stream names (`namespace:room`), their kinds, and who may subscribe or publish (protocol §1–§2)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.access import Role, access_for

CENTER_ROOM = re.compile(r"^[a-z0-9][a-z0-9-]{0,49}$")
USER_ROOM = re.compile(r"^[1-9][0-9]{0,18}$")

CENTER_NAMESPACES = ("deliveries", "orders", "riders", "positions", "chat")
EPHEMERAL_NAMESPACES = frozenset({"positions"})
NAMESPACES = (*CENTER_NAMESPACES, "user", "broadcast")


class UnknownStream(ValueError):
    """The text is not a stream name of this protocol."""


@dataclass(frozen=True, slots=True)
class StreamName:
    namespace: str
    room: str

    def __str__(self) -> str:
        return f"{self.namespace}:{self.room}"

    @property
    def logged(self) -> bool:
        return self.namespace not in EPHEMERAL_NAMESPACES

    @property
    def center_code(self) -> str | None:
        return self.room if self.namespace in CENTER_NAMESPACES else None


def parse_stream(text: object) -> StreamName:
    """Return the stream named by `text`, or raise UnknownStream."""
    if not isinstance(text, str) or text.count(":") != 1:
        raise UnknownStream(text)
    namespace, room = text.split(":")
    if namespace in CENTER_NAMESPACES and CENTER_ROOM.match(room):
        return StreamName(namespace, room)
    if namespace == "user" and USER_ROOM.match(room):
        return StreamName(namespace, room)
    if namespace == "broadcast" and room == "all":
        return StreamName(namespace, room)
    raise UnknownStream(text)


def stream_for_center(namespace: str, center_code: str) -> str:
    return f"{namespace}:{center_code}"


def stream_for_user(user_id: int) -> str:
    return f"user:{user_id}"


BROADCAST = "broadcast:all"

_SUBSCRIBE_BY_ROLE = {
    Role.HQ: frozenset(CENTER_NAMESPACES),
    Role.DISPATCHER: frozenset(CENTER_NAMESPACES),
    Role.CALLCENTER: frozenset({"orders", "deliveries"}),
    Role.RIDER: frozenset({"chat"}),
}


def can_subscribe(user, stream: StreamName) -> bool:
    """Protocol §2, 'may subscribe'. Unknown centers are simply refused like foreign ones."""
    access = access_for(user)
    if access.role is None:
        return False
    if stream.namespace == "broadcast":
        return True
    if stream.namespace == "user":
        return access.role == Role.HQ or stream.room == str(access.user_id)
    return stream.namespace in _SUBSCRIBE_BY_ROLE[access.role] and access.serves(stream.room)


def can_publish(user, stream: StreamName) -> bool:
    """Protocol §2, 'may publish' (for users; tokens are checked by `token_allows`)."""
    access = access_for(user)
    if access.role is None:
        return False
    if stream.namespace == "chat":
        return access.role in (Role.HQ, Role.DISPATCHER, Role.RIDER) and access.serves(stream.room)
    if stream.namespace == "broadcast":
        return access.role == Role.HQ
    if stream.namespace == "user" and access.role == Role.DISPATCHER:
        return _is_rider_of(stream.room, access)
    return False


def _is_rider_of(user_room: str, access) -> bool:
    from riders.models import Rider

    rider = Rider.objects.filter(user_id=int(user_room)).select_related("center").first()
    return rider is not None and access.serves(rider.center.code)
