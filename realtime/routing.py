"""WebSocket routes: the one multiplexed protocol endpoint (protocol.md §3)."""

websocket_urlpatterns: list = []
