"""WebSocket routes: the one multiplexed protocol endpoint (protocol.md §3)."""

from django.urls import path

from realtime.consumers import ProtocolConsumer

websocket_urlpatterns = [path("ws/v1/", ProtocolConsumer.as_asgi())]
