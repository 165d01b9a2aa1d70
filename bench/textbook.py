"""The textbook Channels fan-out, for contrast with the BROS hub (design.md, "Fan-out is designed
per process"): every consumer joins its room's group, the publisher calls `group_send` once per
event, and each consumer receives its own copy from the channel layer and JSON-encodes it.

    uvicorn bench.textbook:application --ws websockets-sansio     # the server (ws /ws/room/<room>/)
    python -m bench.textbook publish                             # the publisher (commands on stdin)

Settings: `bench.textbook_settings` (RedisChannelLayer, default capacity). No authentication:
it would add cost only at connect time, not per message.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.textbook_settings")

import django

django.setup()

from channels.generic.websocket import AsyncJsonWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402


def group_for(room: str) -> str:
    return f"room.{room}"


class RoomConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.group = group_for(self.scope["url_route"]["kwargs"]["room"])
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def relay(self, message):
        await self.send_json(message["frame"])


async def health(scope, receive, send):
    """Plain HTTP answer for the runner's readiness check."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


application = ProtocolTypeRouter(
    {
        "http": health,
        "websocket": URLRouter([path("ws/room/<str:room>/", RoomConsumer.as_asgi())]),
    }
)


def _publisher() -> None:
    import asyncio
    import json
    import time
    from datetime import UTC, datetime

    from channels.layers import get_channel_layer

    from bench.pubcommon import Schedule, event_text, result

    seqs: dict[str, int] = {}  # room -> last seq, kept across commands like a stream's head

    async def run(layer, cmd: dict) -> dict:
        rooms, tag, pad = cmd["rooms"], cmd["tag"], cmd.get("pad", 0)
        schedule = Schedule(cmd.get("rate", 0))
        t_pub = []
        for n in range(cmd["count"]):
            await schedule.await_(n)
            r = n % len(rooms)
            t0 = time.time()
            seqs[rooms[r]] = seq = seqs.get(rooms[r], 0) + 1
            frame = {
                "type": "event",
                "stream": rooms[r],
                "seq": seq,
                "event": "notice",
                "ts": datetime.fromtimestamp(t0, UTC).isoformat(timespec="milliseconds"),
                "data": {"text": event_text(tag, n, t0, pad), "level": "info"},
            }
            await layer.group_send(group_for(rooms[r]), {"type": "relay", "frame": frame})
            t_pub.append(t0)
        return result(cmd, t_pub, schedule, mode="group_send")

    async def main() -> None:
        layer = get_channel_layer()
        loop = asyncio.get_running_loop()
        print(json.dumps({"ready": True}), flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            if not line.strip():
                continue
            cmd = json.loads(line)
            if cmd.get("quit"):
                break
            try:
                answer = await run(layer, cmd)
            except Exception as exc:
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(answer, separators=(",", ":")), flush=True)

    asyncio.run(main())


if __name__ == "__main__" and sys.argv[1:2] == ["publish"]:
    _publisher()
