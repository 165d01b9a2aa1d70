"""uvicorn's sans-I/O WebSocket protocol, with one change: a client that stopped reading is cut off.

When the consumer gives up on a laggard (4001) it returns from the ASGI app without a close frame
having been written, because the transport is not writable. uvicorn then calls
`transport.close()`, which waits for the write buffer to drain — forever, if the client never
reads again — and keeps the socket and megabytes of buffered frames. Here such a transport is
aborted instead (after a short grace, if a close frame did get queued), and one closed as too slow
or silent (4001, 4002) is released after that grace even when its buffer drained. Run uvicorn with
`--ws realtime.uvicorn_protocol:WebSocketProtocol`.
"""

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

CLOSE_GRACE = 2.0  # seconds for a queued close frame to reach a client that reads


# The consumer's close codes for a client that does not read (4001) or answers nothing (4002)
# (realtime.consumers.CLOSE_TOO_SLOW / CLOSE_IDLE): such a client will not answer our close frame.
UNRESPONSIVE_CLOSE_CODES = frozenset({4001, 4002})


class WebSocketProtocol(WebSocketsSansIOProtocol):
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
