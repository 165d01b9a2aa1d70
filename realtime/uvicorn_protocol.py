"""uvicorn's sans-I/O WebSocket protocol, with one change: a client that stopped reading is cut off.

When the consumer gives up on a laggard (4001) it returns from the ASGI app without a close frame
having been written, because the transport is not writable. uvicorn then calls
`transport.close()`, which waits for the write buffer to drain — forever, if the client never
reads again — and keeps the socket and megabytes of buffered frames. Here such a transport is
aborted instead (after a short grace, if a close frame did get queued). Run uvicorn with
`--ws realtime.uvicorn_protocol:WebSocketProtocol`.
"""

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

CLOSE_GRACE = 2.0  # seconds for a queued close frame to reach a client that reads


class WebSocketProtocol(WebSocketsSansIOProtocol):
    async def run_asgi(self) -> None:
        await super().run_asgi()
        if self.transport.get_write_buffer_size() == 0:
            return
        if not self.close_sent:
            self.transport.abort()
        else:
            # The close frame is queued behind frames the client is not reading: give it a
            # moment to drain, then cut the connection if nothing moved.
            self.loop.call_later(CLOSE_GRACE, self._abort_if_stuck)

    def _abort_if_stuck(self) -> None:
        if self.transport.get_write_buffer_size() > 0:
            self.transport.abort()
