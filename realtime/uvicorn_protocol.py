"""uvicorn's sans-I/O WebSocket protocol, with one change: a client that stopped reading is cut off.

When the consumer gives up on a laggard (4001) it returns from the ASGI app without a close frame
having been written, because the transport is not writable. uvicorn then calls
`transport.close()`, which waits for the write buffer to drain — forever, if the client never
reads again — and keeps the socket and megabytes of buffered frames. Here such a transport is
aborted instead. Run uvicorn with `--ws realtime.uvicorn_protocol:WebSocketProtocol`.
"""

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class WebSocketProtocol(WebSocketsSansIOProtocol):
    async def run_asgi(self) -> None:
        await super().run_asgi()
        transport = self.transport
        if not self.close_sent and transport.get_write_buffer_size() > 0:
            transport.abort()
