"""Chat over HTTP (protocol §5.10): the user's rooms with unread counts, older history pages, marking read.

Sending is the protocol's own `publish` (WebSocket frame, or `POST /publish` while the socket is
down). Stream refusals follow the stream endpoints (§5.5): a malformed name or a stream that is no
chat is 404, a chat stream the caller may not read 403 whether or not it exists.
"""

from django.core.exceptions import PermissionDenied
from django.http import Http404
from ninja import Field, Query, Router, Schema

from chat import selectors, services
from core.api_auth import caller_of
from core.api_errors import ANY, WITH_BODY, errors
from realtime.api import readable_stream
from realtime.streams import StreamName

router = Router(tags=["chat"])

CHAT_NAMESPACES = ("chat", "dm")


class PeerOut(Schema):
    id: int
    name: str
    role: str | None


class RoomOut(Schema):
    stream: str
    kind: str
    title: str
    can_write: bool
    peer: PeerOut | None
    unread: int
    last_read: int


class RoomsOut(Schema):
    rooms: list[RoomOut]


class PageOut(Schema):
    stream: str
    messages: list[dict]
    more: bool


class ReadIn(Schema):
    seq: int = Field(ge=0, le=2**53 - 1, strict=True)


class ReadOut(Schema):
    stream: str
    unread: int
    last_read: int


def _user_of(request):
    caller = caller_of(request)
    if caller.token is not None:
        raise PermissionDenied("Chat rooms and read marks belong to users.")
    return caller.user


def _chat_stream(request, stream: str) -> StreamName:
    name = readable_stream(request, stream)
    if name.namespace not in CHAT_NAMESPACES:
        raise Http404("No such chat.")
    return name


@router.get("/chat/rooms", response={200: RoomsOut, **errors(*ANY, 403)})
def rooms(request):
    """The caller's center rooms and possible direct conversations, each with its unread count."""
    return {"rooms": selectors.rooms_for(_user_of(request))}


@router.get("/chat/{stream}/messages", response={200: PageOut, **errors(*ANY, 403, 404, 422)})
def messages(
    request,
    stream: str,
    before: int | None = Query(None, ge=1, le=2**53 - 1),
    limit: int = Query(selectors.PAGE, ge=1, le=selectors.MAX_PAGE),
):
    """Messages with seq < `before` (the latest without it), oldest first; `more`: older ones remain."""
    name = _chat_stream(request, stream)
    frames, more = selectors.page_frames(str(name), before=before, limit=limit)
    return {"stream": str(name), "messages": frames, "more": more}


@router.post("/chat/{stream}/read", response={200: ReadOut, **errors(*WITH_BODY, 403, 404)})
def read(request, stream: str, payload: ReadIn):
    """Mark the stream read up to `seq`; the caller's other tabs get `chat.unread` on `user:<id>`."""
    user = _user_of(request)
    name = _chat_stream(request, stream)
    unread, last_read = services.mark_read(user=user, stream=name, seq=payload.seq)
    return {"stream": str(name), "unread": unread, "last_read": last_read}
