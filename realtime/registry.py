"""Stream kinds: each app registers the streams it owns, the way apps register ModelAdmins.

`realtime` knows the protocol (names, seqs, replay, fan-out) but no domain: a domain app tells it,
in its `AppConfig.ready()`, which namespaces exist, who may read or publish them, how to build a
snapshot and the versions a reconcile frame carries, and what a new subscriber of an ephemeral
stream gets first. It may also handle a client frame type of its own (`position`).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from core.access import Access
    from realtime.models import Event
    from realtime.streams import StreamName

Rule = Callable[["Access", "StreamName"], bool]


def in_memory(rule: Rule) -> Rule:
    """Mark a rule that reads nothing but the Access and the stream name (no database, no Redis).

    A subscribe whose rule is so marked is answered on the event loop, without a thread hop
    (`realtime.streams.subscribe_verdict`); an unmarked rule runs in a worker thread, where it may
    query. Mark only rules that never touch the database: one that did would block the event loop.
    """
    rule.in_memory = True
    return rule


def decides_in_memory(rule: Rule) -> bool:
    return getattr(rule, "in_memory", False)


@in_memory
def nobody(access: Access, stream: StreamName) -> bool:
    return False


def center_roles(*roles: str) -> Rule:
    """The rule "one of `roles`, working for the stream's center"."""

    def rule(access: Access, stream: StreamName) -> bool:
        return access.role in roles and access.serves(stream.room)

    rule.__doc__ = f"One of {', '.join(roles)}, working for the stream's center."
    return in_memory(rule)


@dataclass(frozen=True)
class StreamKind:
    """One namespace of streams and its rules (protocol §1–§2)."""

    namespace: str
    # How rooms are named: a center code, a user id, two user ids "<lower>-<higher>", or "all".
    rooms: Literal["center", "user", "pair", "all"]
    may_subscribe: Rule
    may_publish: Rule = nobody
    # Ephemeral streams have no seq and no history (GPS positions).
    logged: bool = True
    # room -> the current items of a snapshot; None: the stream's latest events instead.
    snapshot: Callable[[str], list[dict]] | None = None
    # room -> {entity id: version} for the reconcile frames; None: not reconciled.
    versions: Callable[[str], dict[str, int]] | None = None
    # room -> frames a new subscriber gets before anything else (ephemeral streams' current state).
    join_frames: Callable[[str], list[str]] | None = None
    # (actor, stream, event, data, via) -> the logged Event: the owning app stores what a client
    # publishes here (chat messages) and emits the event in the same transaction. None: the event
    # is only logged (`realtime.services.publish_event`).
    publish: Callable[..., Event] | None = None
    # Private to the users the rules admit: no API token reads it, whatever its patterns say.
    users_only: bool = False


class FrameRefused(Exception):
    """A client frame handled by an app was refused: sent back as an `error` frame with `code`."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


# async (access, frame fields without "type"/"id") -> None; raises FrameRefused. Awaited on the event
# loop, so it must not block: a handler that needs the database wraps that part in
# `database_sync_to_async` itself (riders' `position` makes one asyncio Redis call, no thread hop).
FrameHandler = Callable[["Access", dict], Awaitable[None]]

_kinds: dict[str, StreamKind] = {}
_frame_handlers: dict[str, FrameHandler] = {}


def register(kind: StreamKind) -> StreamKind:
    """Add a stream kind; registering one namespace twice is a programming error."""
    if kind.namespace in _kinds and _kinds[kind.namespace] != kind:
        raise ValueError(f"stream kind {kind.namespace!r} is already registered")
    _kinds[kind.namespace] = kind
    return kind


def register_frame(frame_type: str, handler: FrameHandler) -> None:
    """Let an app handle client frames of `frame_type` (e.g. riders' `position`) with an `async def`."""
    if not inspect.iscoroutinefunction(handler):
        raise TypeError(f"the handler of {frame_type!r} frames must be an async function (it runs on the event loop)")
    _frame_handlers[frame_type] = handler


def kind(namespace: str) -> StreamKind | None:
    return _kinds.get(namespace)


def kinds() -> list[StreamKind]:
    return list(_kinds.values())


def namespaces() -> list[str]:
    return list(_kinds)


def frame_handler(frame_type: str) -> FrameHandler | None:
    return _frame_handlers.get(frame_type)
