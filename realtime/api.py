"""HTTP side of the real-time protocol (§4): snapshot, events (polling and gap fill), publish.

Refusals never reveal whether a stream exists or has data: a stream the caller may not read is
403 whether or not anything was ever written to it; only a malformed name is 404.
"""

import json

from django.core.exceptions import PermissionDenied
from django.http import Http404
from ninja import Field, Path, Query, Router, Schema

from core.access import token_allows
from core.api_auth import caller_of, idempotent
from core.api_errors import ANY, WITH_BODY, errors
from realtime import outbox, ratelimit, services
from realtime.snapshots import read_snapshot
from realtime.streams import StreamName, UnknownStream, can_publish, can_subscribe, parse_stream

router = Router(tags=["streams"])

MAX_PUBLISH_BYTES = 64 * 1024
STREAM_EXAMPLE = "deliveries:gangnam"  # the schemathesis run starts from it


class SnapshotOut(Schema):
    stream: str
    epoch: str | None
    head: int | None
    items: list[dict]


class EventsOut(Schema):
    stream: str
    epoch: str
    head: int
    events: list[dict]
    reset: bool


class PublishIn(Schema):
    namespace: str = Field(max_length=20)
    room: str = Field(max_length=50)
    event: str = Field(max_length=60)
    data: dict


class PublishOut(Schema):
    stream: str
    seq: int


def readable_stream(request, text: str) -> StreamName:
    """Parse the path's stream and check the caller may read it (as a subscription, §2)."""
    try:
        stream = parse_stream(text)
    except UnknownStream:
        raise Http404("No such stream.") from None
    caller = caller_of(request)
    if caller.token:
        allowed = not stream.kind.users_only and token_allows(caller.token.streams, str(stream))
    else:
        allowed = can_subscribe(caller.user, stream)
    if not allowed:
        raise PermissionDenied("not allowed")
    return stream


@router.get("/streams/{stream}/snapshot", response={200: SnapshotOut, **errors(*ANY, 403, 404)})
def snapshot(request, stream: str = Path(..., example=STREAM_EXAMPLE)):
    """The stream's current state and the head it corresponds to, read in one database snapshot."""
    return read_snapshot(readable_stream(request, stream))


@router.get("/streams/{stream}/events", response={200: EventsOut, **errors(*ANY, 403, 404, 422)})
def events(
    request,
    stream: str = Path(..., example=STREAM_EXAMPLE),
    since: int = Query(..., ge=0),
    epoch: str = "",
    limit: int = Query(500, ge=1, le=1000),
):
    """Events after `since` (the polling fallback and gap fill); `reset` if they can't be given exactly."""
    name = readable_stream(request, stream)
    if not name.logged:
        raise Http404("This stream keeps no history.")
    history = outbox.read_history(str(name), since=since, epoch=epoch or None, limit=limit)
    return {
        "stream": history.stream,
        "epoch": history.epoch,
        "head": history.head,
        "events": [outbox.frame_dict(e) for e in history.events],
        "reset": history.reset,
    }


@router.post("/publish", response={202: PublishOut, **errors(*WITH_BODY, 403, 429)})
@idempotent
def publish(request, payload: PublishIn):
    """The seeds' publish API: log an event on `namespace:room` and deliver it like any other."""
    if len(json.dumps(payload.data)) > MAX_PUBLISH_BYTES:
        return 413, {"detail": "Event data is limited to 64 KiB."}
    try:
        stream = parse_stream(f"{payload.namespace}:{payload.room}")
    except UnknownStream:
        raise services.NotPublishable("No such stream.") from None
    caller = caller_of(request)
    if caller.token is not None:
        caller.require_token_scope("publish", str(stream))
    elif not can_publish(caller.user, stream):
        raise PermissionDenied("not allowed")
    ratelimit.take_publish(caller.owner)
    row = services.publish_event(
        actor=caller.user, stream=stream, event=payload.event, data=payload.data, via=caller.via
    )
    return 202, {"stream": row.stream, "seq": row.seq}
