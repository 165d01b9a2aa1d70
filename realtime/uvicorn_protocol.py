"""uvicorn's sans-I/O WebSocket protocol, tuned for fan-out. Run uvicorn with
`--ws realtime.uvicorn_protocol:WebSocketProtocol`.

Three changes to uvicorn's class:

- **One event, one frame.** Server frames are not masked, so the bytes of an event's text frame
  are the same for every socket. The hub hands the same `str` object to each subscriber, so the
  frame is built once (the last one is kept) and each socket's `send` is a single
  `transport.write`, where uvicorn would encode the text, build and serialize a frame and join its
  output per socket. For that, per-message compression is never negotiated: it would make each
  socket's bytes different and cost a deflate per socket per event, and our frames are small
  JSON (socket.io, which we replace, turns it off by default too).
- **A client that stopped reading is cut off.** When the consumer gives up on a laggard (4001) it
  returns from the ASGI app without a close frame having been written, because the transport is
  not writable. uvicorn then calls `transport.close()`, which waits for the write buffer to drain —
  forever, if the client never reads again — and keeps the socket and megabytes of buffered
  frames. Here such a transport is aborted instead (after a short grace, if a close frame did get
  queued), and one closed as too slow or silent (4001, 4002) is released after that grace even
  when its buffer drained.

- **One write per socket per loop turn.** The frames `write_text` takes during one turn of the
  event loop are written together at its end, one `transport.write` per socket: a command's
  `deliveries` and `riders` events reach the same dashboards back to back, and a busy hub handles
  several bus messages per turn, while each write is a system call that on loopback also runs the
  receiver's TCP work (70 % of a saturated process's time in the shift benchmark). Every other
  write uvicorn makes on the socket (pong, close, the ASGI `send`) goes through `_OrderedTransport`,
  which writes the batched frames first, so nothing overtakes them.

- **No second heartbeat.** uvicorn pings every socket itself (`--ws-ping-interval`, 20 s), with a
  timer or two per socket and a frame each way. The protocol's own `ping`/`pong` (carrying the
  heads) already finds a silent or laggard client (realtime.consumers, REALTIME_PONG_TIMEOUT and
  REALTIME_IDLE_TIMEOUT), so uvicorn's is switched off here: at 5,000 sockets it was 250 writes, 250
  frames to parse and 500 timers a second spent on knowing nothing new.

And it holds less per idle socket (docs/benchmarks.md, "Memory per idle connection"): the
handshake's parsed request and response (their header objects, ~4 kB) are dropped once the
socket is accepted (the scope keeps the headers the app reads), and the receive queue and the
`writable` event are `realtime.lean`'s, which allocate nothing until used (~3.5 kB).
"""

from __future__ import annotations

import asyncio
import weakref

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from realtime.lean import Flag, Inbox

_OPEN = State.OPEN  # read per frame: an enum member looked up on its class costs ~70 ns on Python 3.11
CLOSE_GRACE = 2.0  # seconds for a queued close frame to reach a client that reads
WRITE_TEXT = "bros.websocket.write_text"  # the scope extension: `write_text(text) -> bool`


class _LastFrame:
    """The wire bytes of the last text frame built: one event is sent to every socket in a row."""

    text: str | None = None
    data: bytes = b""

    @classmethod
    def of(cls, text: str) -> bytes:
        if text is not cls.text:
            cls.data = Frame(Opcode.TEXT, text.encode()).serialize(mask=False)
            cls.text = text
        return cls.data


def text_frame(text: str) -> bytes:
    """The bytes of an unmasked, unfragmented, uncompressed text frame carrying `text`."""
    return _LastFrame.of(text)


class _TurnWrites:
    """The sockets with frames waiting for the end of this loop turn; one instance per event loop."""

    __slots__ = ("loop", "sockets", "scheduled", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.sockets: list[WebSocketProtocol] = []
        self.scheduled = False

    def add(self, protocol: WebSocketProtocol) -> None:
        self.sockets.append(protocol)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        sockets, self.sockets = self.sockets, []
        for protocol in sockets:
            protocol.flush_frames()


_turn_writes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _TurnWrites] = weakref.WeakKeyDictionary()


def _turn_writes_of(loop: asyncio.AbstractEventLoop) -> _TurnWrites:
    writes = _turn_writes.get(loop)
    if writes is None:
        writes = _turn_writes[loop] = _TurnWrites(loop)
    return writes


class _OrderedTransport:
    """The socket's transport as uvicorn sees it: a write writes the frames batched this turn first."""

    __slots__ = ("_protocol", "_transport")

    def __init__(self, protocol: WebSocketProtocol, transport):
        self._protocol = protocol
        self._transport = transport

    def write(self, data) -> None:
        self._protocol.flush_frames()
        self._transport.write(data)

    def close(self) -> None:  # a graceful close sends what was written before it
        self._protocol.flush_frames()
        self._transport.close()

    def __getattr__(self, name):
        return getattr(self._transport, name)


# The consumer's close codes for a client that does not read (4001) or answers nothing (4002)
# (realtime.consumers.CLOSE_TOO_SLOW / CLOSE_IDLE): such a client will not answer our close frame.
UNRESPONSIVE_CLOSE_CODES = frozenset({4001, 4002})


class WebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, config, *args, **kwargs) -> None:
        config.ws_per_message_deflate = False  # read by WebSocket protocols only; see above
        super().__init__(config, *args, **kwargs)
        self.ping_interval = None  # the protocol's own ping/pong is the heartbeat; see above
        # uvicorn calls only put_nowait/get/empty on the queue and set/clear/wait/is_set on writable.
        self.queue = Inbox()
        self.writable = Flag(True)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._raw_transport = transport
        self._frames: bytes | list[bytes] | None = None  # written at the end of this loop turn
        self._turn = _turn_writes_of(self.loop)
        self.transport = _OrderedTransport(self, transport)

    def flush_frames(self) -> None:
        """Write the frames `write_text` took this turn, in one write (dropped if the socket closed)."""
        frames, self._frames = self._frames, None
        if frames is None or self._raw_transport.is_closing():
            return
        self._raw_transport.write(frames if frames.__class__ is bytes else b"".join(frames))

    def handle_connect(self, event) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # none when the handshake was refused
        if scope is not None:
            scope["extensions"][WRITE_TEXT] = self.write_text

    def write_text(self, text: str) -> bool:
        """Take a text frame for this turn's write if the socket is open and writable; False: go through `send`.

        The ASGI `send` costs a message dict, a coroutine and its StopIteration per socket per
        event; the consumer's FrameSender calls this instead (the `bros.websocket.write_text`
        scope extension) and falls back to `send` when it answers False.
        """
        if (
            self.handshake_complete
            and not self.close_sent
            and not self.disconnected
            and self.initial_response is None
            and self.writable.is_set()
            and self.conn.state is _OPEN
            and not self.conn.extensions
        ):
            data, frames = text_frame(text), self._frames
            if frames is None:
                self._frames = data
                self._turn.add(self)
            elif frames.__class__ is bytes:
                self._frames = [frames, data]
            else:
                frames.append(data)
            return True
        return False

    async def send(self, message) -> None:
        # The open, writable, uncompressed case of uvicorn's `websocket.send`, minus the per-socket
        # framing; everything else (handshake, close, a paused or closing transport) is uvicorn's.
        if message["type"] == "websocket.send" and (text := message.get("text")) is not None and self.write_text(text):
            return
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete and self.request is not None:
            # uvicorn reads them only to answer the handshake; the scope has the request's headers.
            # The request's are emptied too: websockets' parser generator keeps the request alive.
            self.request.headers.clear()
            self.request = self.response = None

    async def run_asgi(self) -> None:
        await super().run_asgi()
        if not self.close_sent:
            if self.transport.get_write_buffer_size() > 0:
                self.transport.abort()
            return
        sent = self.conn.close_sent
        unresponsive = sent is not None and sent.code in UNRESPONSIVE_CLOSE_CODES
        if unresponsive or self.transport.get_write_buffer_size() > 0:
            # Give a queued close frame a moment to drain, then release the connection rather
            # than wait out uvicorn's 10 s close timeout for an answer that will not come.
            self.loop.call_later(CLOSE_GRACE, self._release)

    def _release(self) -> None:
        if self.transport.is_closing():
            return
        if self.transport.get_write_buffer_size() > 0:
            self.transport.abort()  # nothing moved: the close frame never left
        else:
            self.transport.close()  # the close frame is out: FIN now
