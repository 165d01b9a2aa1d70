"""Access changes reach open sockets on a real server (protocol §3.6): a dispatcher removed from a
center in the admin loses that center's stream at the next heartbeat and gets none of its events."""

from __future__ import annotations

import asyncio

from django.contrib.auth import get_user_model
from django.test import Client

from core.models import Center, StaffProfile
from tests.live.conftest import WsClient, bus_marker, create_orders, db

DELIVERIES = "deliveries:gangnam"


def remove_from_gangnam_in_the_admin(username: str) -> None:
    """Save the user's staff profile in the admin with Mapo instead of Gangnam, as an HQ admin would."""
    admin = Client()
    admin.force_login(get_user_model().objects.get(username="admin"))
    profile = StaffProfile.objects.get(user__username=username)
    response = admin.post(
        f"/admin/core/staffprofile/{profile.pk}/change/",
        {"user": profile.user_id, "role": profile.role, "centers": [Center.objects.get(code="mapo").pk]},
    )
    assert response.status_code == 302, response.content[:2000]


async def barrier(client: WsClient) -> list[dict]:
    """Every non-ping frame the server sent before answering this `ping` with its `pong`."""
    await client.send({"type": "ping", "id": "barrier"})
    frames = []
    while (frame := await client.next()) != {"type": "pong", "id": "barrier"}:
        frames.append(frame)
    return frames


async def test_dispatcher_removed_from_a_center_in_the_admin_loses_its_stream_within_one_heartbeat(
    live_servers, session_cookie, ws_clients, demo_tx
):
    """After the admin save, `unsubscribed` for deliveries:gangnam comes before the second ping, and
    a Gangnam event that HQ receives on the same server never reaches the dispatcher."""
    (server,) = await asyncio.to_thread(live_servers, 1)
    dispatcher = await ws_clients(server, await db(session_cookie)("dispatch-gangnam"))
    witness = await ws_clients(server, await db(session_cookie)("hq"))
    await dispatcher.subscribe(DELIVERIES)
    await witness.subscribe(DELIVERIES)

    await db(remove_from_gangnam_in_the_admin)("dispatch-gangnam")
    while not dispatcher.frames.empty():  # pings sent before the save committed
        assert dispatcher.frames.get_nowait()["type"] == "ping"
    pings, frames = 0, []
    while pings < 2 and not frames:  # the change may land between one tick's check and its ping
        frame = await dispatcher.next(skip=())
        if frame["type"] == "ping":
            pings += 1
        else:
            frames.append(frame)
    assert frames == [{"type": "unsubscribed", "id": None, "stream": DELIVERIES, "reason": "forbidden"}]

    await db(create_orders)(1)
    marker = await bus_marker(DELIVERIES)
    assert [f["event"] for f in await witness.frames_until(marker)] == ["delivery.created"]
    # The server hands each event to all the stream's local subscribers at once, before the marker.
    assert await barrier(dispatcher) == []
