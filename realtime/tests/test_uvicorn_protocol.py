"""The uvicorn protocol class frames an event once: its bytes must be exactly uvicorn's own."""

from __future__ import annotations

import asyncio
import collections
import gc

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState
from websockets.frames import Opcode
from websockets.protocol import Protocol, Side, State

from realtime.lean import Flag, Inbox
from realtime.uvicorn_protocol import WebSocketProtocol, text_frame

# Payload lengths around the frame header's three size encodings (7-bit, 16-bit, 64-bit).
LENGTHS = [0, 1, 125, 126, 127, 65535, 65536, 70000]


def uvicorn_bytes(text: str) -> bytes:
    """What uvicorn's sans-I/O protocol writes for `websocket.send` with this text, no extensions."""
    server = Protocol(Side.SERVER, state=State.OPEN, max_size=None)
    server.send_text(text.encode())
    return b"".join(server.data_to_send())


@pytest.mark.parametrize("length", LENGTHS)
def test_a_text_frame_is_byte_for_byte_what_uvicorn_would_write(length):
    text = ("배달 " * length)[:length]  # multi-byte UTF-8: the header counts bytes, not characters
    assert text_frame(text) == uvicorn_bytes(text)


@pytest.mark.parametrize("length", LENGTHS)
def test_a_client_reads_the_frame_back_as_the_same_text(length):
    text = ('{"type":"event"}' * (length // 16 + 1))[:length]
    client = Protocol(Side.CLIENT, state=State.OPEN, max_size=None)  # past the handshake
    client.receive_data(text_frame(text))
    (frame,) = client.events_received()
    assert frame.opcode is Opcode.TEXT and frame.fin
    assert frame.data.decode() == text


def test_one_event_is_framed_once_for_all_its_sockets():
    event = '{"type":"event","stream":"deliveries:gangnam","seq":7}'
    first = text_frame(event)
    assert text_frame(event) is first  # the hub hands every socket the same str: no second framing
    other = text_frame('{"type":"event","stream":"deliveries:gangnam","seq":8}')
    assert other != first
    assert text_frame("".join(["{", event[1:]])) == first  # an equal text built anew: same bytes


class Transport:
    """Enough of an asyncio transport for the protocol: records what is written."""

    def __init__(self):
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)


HANDSHAKE = (
    b"GET /ws/v1/ HTTP/1.1\r\nHost: bros.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
)


async def open_protocol():
    """A protocol past its handshake; the ASGI app only records its scope and waits."""
    scopes = []

    async def app(scope, receive, send):
        scopes.append(scope)
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await asyncio.Event().wait()

    config = Config(app=app, interface="asgi3", ws_per_message_deflate=True, lifespan="off")
    config.load()
    protocol = WebSocketProtocol(config, ServerState(), {})
    transport = Transport()
    protocol.connection_made(transport)
    protocol.data_received(HANDSHAKE)
    for _ in range(3):
        await asyncio.sleep(0)
    return protocol, transport, scopes[0]


async def test_the_scope_offers_a_synchronous_write_of_one_frame_per_event_and_no_compression():
    protocol, transport, scope = await open_protocol()
    assert transport.written[0].startswith(b"HTTP/1.1 101")
    assert b"permessage-deflate" not in transport.written[0]  # offered by the client, not accepted
    write = scope["extensions"]["bros.websocket.write_text"]
    assert write('{"type":"pong"}') is True
    await asyncio.sleep(0)  # written at the end of the loop turn
    assert transport.written[-1] == text_frame('{"type":"pong"}')
    protocol.pause_writing()  # the transport's buffer is full: the ASGI send must wait instead
    assert write('{"type":"pong"}') is False
    protocol.resume_writing()
    protocol.conn.send_close(4001)  # closing (as the consumer does for a laggard)
    protocol.close_sent = True
    assert write('{"type":"pong"}') is False
    for task in protocol.tasks:
        task.cancel()


async def test_frames_of_one_loop_turn_leave_in_one_write_in_order_and_before_any_other_write():
    protocol, transport, scope = await open_protocol()
    write = scope["extensions"]["bros.websocket.write_text"]
    before = len(transport.written)
    events = [f'{{"type":"event","seq":{n}}}' for n in range(1, 4)]
    for event in events:
        assert write(event) is True
    assert len(transport.written) == before  # nothing yet: the turn is not over
    await asyncio.sleep(0)
    assert transport.written[before:] == [b"".join(text_frame(event) for event in events)]

    # A write of uvicorn's own (here: a pong, as handle_ping writes it) sends the turn's frames first.
    assert write(events[0]) is True
    protocol.transport.write(b"<pong>")
    assert transport.written[-2:] == [text_frame(events[0]), b"<pong>"]
    await asyncio.sleep(0)
    assert transport.written[-1] == b"<pong>"  # and they are not written twice

    # Frames of a socket that closed before the turn ended are dropped, not written to it.
    assert write(events[1]) is True
    transport.closing = True
    count = len(transport.written)
    await asyncio.sleep(0)
    assert len(transport.written) == count
    for task in protocol.tasks:
        task.cancel()


async def test_uvicorn_sends_no_keepalive_pings_of_its_own():
    """The protocol's `ping`/`pong` is the heartbeat; uvicorn's would double the frames and timers."""
    protocol, transport, _scope = await open_protocol()
    assert protocol.config.ws_ping_interval == 20.0  # uvicorn's default is on
    assert protocol.ping_timer is None and protocol.pong_timer is None
    before = len(transport.written)
    protocol.data_received(b"\x89\x80\x00\x00\x00\x00")  # but a client's ping is still answered
    assert transport.written[before:] == [b"\x8a\x00"]
    for task in protocol.tasks:
        task.cancel()


async def test_an_accepted_socket_keeps_no_parsed_handshake_nor_eager_asyncio_queue():
    """What an idle socket holds (docs/benchmarks.md, "Memory per idle connection"): the scope's headers only."""
    protocol, _transport, scope = await open_protocol()
    assert (b"Host", b"bros.test") in scope["headers"]  # what the app reads stays
    assert protocol.request is None and protocol.response is None
    parsed = protocol.conn.parser.gi_frame.f_locals.get("request")  # websockets' parser keeps its request
    assert parsed is None or not parsed.headers
    # uvicorn's asyncio.Queue and Event: four 64-slot deques per socket; ours allocate when used.
    assert isinstance(protocol.queue, Inbox) and protocol.queue.empty()
    assert isinstance(protocol.writable, Flag) and protocol.writable.is_set()
    assert not any(isinstance(o, collections.deque) for o in gc.get_referents(protocol.queue, protocol.writable))
    for task in protocol.tasks:
        task.cancel()


async def test_the_lean_inbox_and_flag_behave_like_asyncios_queue_and_event():
    inbox, flag = Inbox(), Flag()
    getter = asyncio.ensure_future(inbox.get())
    waiters = [asyncio.ensure_future(flag.wait()) for _ in range(2)]
    await asyncio.sleep(0)
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert await getter == 1 and inbox.qsize() == 1 and await inbox.get() == 2 and inbox.empty()
    assert not any(w.done() for w in waiters)
    flag.set()
    assert await asyncio.gather(*waiters) == [True, True]
    flag.clear()
    waiter = asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0)
    waiter.cancel()  # a cancelled wait leaves nothing behind
    await asyncio.gather(waiter, return_exceptions=True)
    assert not flag._waiters and not flag.is_set()
    cancelled = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    inbox.put_nowait(3)
    assert await inbox.get() == 3  # a cancelled get lost nothing and frees the one reader's place
