"""Bad input over the WebSocket (issue 12, bugs 6 and 7): `bad_request`, never `internal`, and the socket lives on.

Connections go through `Utf8Wire`, which encodes every outgoing text frame as UTF-8 the way a real
server does: the WebSocket communicator alone would pass a reply with a lone surrogate straight
through, hiding the failure a server has when it writes it.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import strict_input
from realtime import frames
from realtime.models import Event
from realtime.tests.wsclient import emit_notices, in_thread

HQ = "hq"
RIDER = "rider-gangnam-01"
BROADCAST = "broadcast:all"
LAT_401_DIGITS = "9" * 401


class Utf8Wire:
    """The ASGI application behind a server's UTF-8 encoding of text frames (as uvicorn does)."""

    def __init__(self, app=None):
        from bros.asgi import application

        self.app = app or application

    async def __call__(self, scope, receive, send):
        async def encoding_send(message):
            if message["type"] == "websocket.send" and message.get("text") is not None:
                message["text"].encode("utf-8")  # raises UnicodeEncodeError, as the server's write would
            await send(message)

        return await self.app(scope, receive, encoding_send)


def is_error(frame: dict, code: str, id=None) -> bool:
    return frame["type"] == "error" and frame["code"] == code and frame["id"] == id and bool(frame["message"])


async def still_works(client) -> None:
    """The socket answers a ping barrier with nothing pending, and a new event on a subscribed stream arrives."""
    assert await client.barrier() == []
    (seq,) = await in_thread(emit_notices, 1)
    (event,) = await client.events(1)
    assert (event["stream"], event["seq"]) == (BROADCAST, seq)


async def test_lone_surrogate_in_frame_id_is_bad_request_without_id_and_the_socket_keeps_delivering(ws):
    """A frame whose `id` is a lone surrogate: `bad_request` with no id (it cannot be sent back); events flow on."""
    client = await ws.connect(HQ, app=Utf8Wire())
    assert (await client.subscribe(BROADCAST))["type"] == "subscribed"
    reply = await client.request('{"type": "ping", "id": "\\ud800"}')
    assert is_error(reply, "bad_request", None), reply
    await still_works(client)


async def test_frame_nested_5000_deep_is_bad_request(ws):
    """A frame nested 5,000 deep (RecursionError in the parser) is `bad_request`, not `internal`."""
    client = await ws.connect(HQ, app=Utf8Wire())
    assert (await client.subscribe(BROADCAST))["type"] == "subscribed"
    for text in ("[" * 5000 + "]" * 5000, '{"type": "ping", "id": "d", "pad": ' + "[" * 5000 + "]" * 5000 + "}"):
        reply = await client.request(text)
        assert reply["type"] == "error" and reply["code"] == "bad_request", reply
    await still_works(client)


async def test_position_with_a_401_digit_lat_is_bad_request(ws, no_live_positions):
    """A rider's `position` with a 401-digit integer `lat` (float overflow) is `bad_request` with its id."""
    rider = await ws.connect(RIDER, app=Utf8Wire())
    assert (await rider.subscribe(BROADCAST))["type"] == "subscribed"
    reply = await rider.request(f'{{"type": "position", "id": "f1", "lat": {LAT_401_DIGITS}, "lng": 127.0}}')
    assert is_error(reply, "bad_request", "f1"), reply
    await still_works(rider)


async def test_publish_with_a_lone_surrogate_in_client_msg_id_is_bad_request_and_logs_nothing(ws):
    """A chat message whose `client_msg_id` is a lone surrogate (jsonb refuses it) is `bad_request`, nothing logged."""
    client = await ws.connect(HQ, app=Utf8Wire())
    assert (await client.subscribe(BROADCAST))["type"] == "subscribed"
    before = await in_thread(lambda: Event.objects.filter(stream="chat:gangnam").count())
    text = (
        '{"type": "publish", "id": "p1", "stream": "chat:gangnam", "event": "chat.message",'
        ' "data": {"text": "hi", "client_msg_id": "\\udc00x"}}'
    )
    assert is_error(await client.request(text), "bad_request", "p1")
    await still_works(client)
    assert await in_thread(lambda: Event.objects.filter(stream="chat:gangnam").count()) == before


def test_control_frames_are_always_utf8_encodable():
    """frames.dumps writes a lone surrogate as an escape, so the frame encodes and reads back as the same string."""
    text = frames.error(id="\ud800", code="bad_request", message="가")
    text.encode("utf-8")
    assert json.loads(text)["id"] == "\ud800"
    assert frames.dumps({"type": "pong", "id": "가"}) == '{"type":"pong","id":"가"}'  # non-ASCII stays as is


# -- fuzzing the frame parser --------------------------------------------------------------------

FIELDS = ["type", "id", "stream", "since", "epoch", "event", "data", "lat", "lng", "ts", "text", "client_msg_id"]
TYPES = ["subscribe", "unsubscribe", "publish", "ping", "pong", "position", "nope"]
STREAMS = ["broadcast:all", "chat:gangnam", "deliveries:gangnam", "positions:gangnam", "chat:mapo", "x"]

lone_surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
texts = st.one_of(
    st.text(max_size=20), st.text(alphabet=lone_surrogates, min_size=1, max_size=3), st.sampled_from(TYPES + STREAMS)
)
numbers = st.one_of(
    st.integers(min_value=-(10**420), max_value=10**420),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-1, max_value=10**6),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, texts),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(FIELDS), texts), inner, max_size=4)
    ),
    max_leaves=12,
)
frame_objects = st.fixed_dictionaries(
    {"type": st.one_of(st.sampled_from(TYPES), json_values)},
    optional={
        name: st.one_of(json_values, texts if name != "stream" else st.sampled_from(STREAMS)) for name in FIELDS[1:]
    },
)


def _nested(depth: int) -> str:
    return '{"type": "ping", "id": "n", "x": ' + "[" * depth + "]" * depth + "}"


frame_texts = st.one_of(
    frame_objects.map(json.dumps),  # ASCII-escaped: lone surrogates arrive as \\udXXX escapes, NaN as NaN
    json_values.map(json.dumps),
    st.integers(min_value=1, max_value=5000).map(_nested),
    st.text(min_size=1, max_size=40),  # the communicator cannot send an empty text frame
    st.from_regex(
        r'\{"type": ?"(ping|position|subscribe)", ?"(id|lat|since)": ?-?[0-9]{1,500}(\.[0-9]+)?(e[0-9]{1,4})?\}'
    ),
)


async def test_fuzzed_frames_never_yield_internal_nor_stop_the_socket(ws, no_live_positions):
    """Arbitrary JSON-ish text frames to an HQ and a rider socket: never `internal`; each answers a ping after each."""
    clients = [await ws.connect(HQ, app=Utf8Wire()), await ws.connect(RIDER, app=Utf8Wire())]
    loop = asyncio.get_running_loop()

    async def exchange(text: str) -> list[dict]:
        replies = []
        for client in clients:
            await client.send(text)
            replies.extend(await client.barrier())  # fails (times out) if the socket stopped answering
        return replies

    @settings(
        max_examples=120,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(text=frame_texts)
    def frame_gets_no_internal(text):
        replies = asyncio.run_coroutine_threadsafe(exchange(text), loop).result(timeout=30)
        assert not [r for r in replies if r.get("code") == "internal"], (text[:200], replies)

    await asyncio.to_thread(frame_gets_no_internal)
    for client in clients:
        assert await client.alive()


def test_strict_json_refuses_what_breaks_later_and_keeps_the_rest():
    """strict_input.loads: lone surrogates, NaN, ±Infinity, 1e999, huge integers and deep nesting are refused."""
    refused = [
        '"\\ud800"',
        '{"\\udfff": 1}',
        "NaN",
        "[-Infinity]",
        "1e999",
        "9" * 401,
        "[" * 33 + "]" * 33,
        "[" * 5000 + "]" * 5000,
    ]
    for text in refused:
        with pytest.raises(strict_input.StrictInputError):
            strict_input.loads(text)
    kept = '{"a": [1, 2.5, "가", "\\ud83d\\ude00", null, true], "n": 9007199254740991}'
    assert strict_input.loads(kept) == json.loads(kept)
    assert strict_input.loads("[" * 32 + "]" * 32)
