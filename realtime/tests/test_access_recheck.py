"""Open sockets follow access changes (protocol.md §3.6): at the next heartbeat a socket leaves the
streams its user may no longer read, with an `unsubscribed` frame, or closes (4003) when the user
may no longer connect at all. Only users whose access version moved are re-read."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from core.access_versions import access_changed
from core.models import Center, StaffProfile
from deliveries import services
from realtime.tests.wsclient import WsClients, emit_notices, in_thread

DISPATCHER = "dispatch-gangnam"
HQ = "hq"
GANGNAM = "deliveries:gangnam"


@pytest.fixture
async def ws(settings, demo_tx):
    """Connections to the real ASGI app with a fast heartbeat; closed and the hub stopped at the end."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.REALTIME_PING_INTERVAL = 0.2
    clients = WsClients()
    yield clients
    await clients.shutdown()


def move_staff(username: str, *, to: str, bump: bool = True) -> None:
    """Give the user's staff profile only the center `to` (as the admin's save does, bump included)."""
    profile = StaffProfile.objects.get(user__username=username)
    profile.centers.set([Center.objects.get(code=to)])
    if bump:
        access_changed(profile.user_id)


def deactivate(username: str) -> None:
    user = get_user_model().objects.get(username=username)
    user.is_active = False
    user.save(update_fields=["is_active"])
    access_changed(user.pk)


def take_gangnam_order(demo) -> None:
    services.create_order(
        actor=None,
        shop_id=demo.shop("gangnam").pk,
        customer_name="Kim",
        customer_phone="010-1111-2222",
        address="Teheran-ro 1",
        items=[{"name": "Tteokbokki", "qty": 1}],
    )


async def frames_before_pings(client, pings: int) -> list[dict]:
    """Every non-ping frame that arrives before the server's `pings`-th heartbeat ping from now."""
    frames = []
    while pings:
        frame = await client.recv(timeout=5, pings=True)
        if frame["type"] == "ping":
            pings -= 1
            await client.send({"type": "pong"})
        else:
            frames.append(frame)
    return frames


async def test_socket_loses_a_center_stream_at_the_next_heartbeat_after_the_user_leaves_the_center(ws, demo_tx):
    """A dispatcher moved from Gangnam to Mapo gets `unsubscribed` for deliveries:gangnam within one heartbeat
    and no Gangnam event after it, while HQ still gets them and the dispatcher keeps their own stream."""
    client, witness = await ws.connect(DISPATCHER), await ws.connect(HQ)
    own = f"user:{client.user.pk}"
    for stream in (GANGNAM, own):
        assert (await client.subscribe(stream))["type"] == "subscribed"
    assert (await witness.subscribe(GANGNAM))["type"] == "subscribed"

    await in_thread(move_staff, DISPATCHER, to="mapo")
    # The change may land just after one tick's check: the tick after that re-checks for sure.
    frames = await frames_before_pings(client, 2)
    assert frames == [{"type": "unsubscribed", "id": None, "stream": GANGNAM, "reason": "forbidden"}]

    await in_thread(take_gangnam_order, demo_tx)
    assert (await witness.recv())["event"] == "delivery.created"
    # The hub hands an event to all the stream's subscribers at once: `client` would have it by now.
    assert await client.barrier() == []
    await in_thread(emit_notices, 1, stream=own)
    assert [(e["stream"], e["event"]) for e in await client.events(1)] == [(own, "notice")]
    assert await client.subscribe(GANGNAM, id="again") == {
        "type": "error",
        "id": "again",
        "code": "forbidden",
        "message": "not allowed",
    }


async def test_socket_of_a_deactivated_user_is_closed_with_4003(ws):
    """A user deactivated while connected has their socket closed (4003) at the next heartbeat."""
    client = await ws.connect(DISPATCHER)
    assert (await client.subscribe(GANGNAM))["type"] == "subscribed"
    await in_thread(deactivate, DISPATCHER)
    assert await client.closed(timeout=5) == 4003


async def test_socket_keeps_its_streams_while_the_access_version_is_unchanged(ws):
    """Without a bump nothing is re-read: heartbeats compare versions only (the cheap path)."""
    client = await ws.connect(DISPATCHER)
    assert (await client.subscribe(GANGNAM))["type"] == "subscribed"
    await in_thread(move_staff, DISPATCHER, to="mapo", bump=False)
    assert await frames_before_pings(client, 3) == []
    await in_thread(access_changed, client.user.pk)
    assert await frames_before_pings(client, 2) == [
        {"type": "unsubscribed", "id": None, "stream": GANGNAM, "reason": "forbidden"}
    ]


async def test_other_users_sockets_keep_their_streams(ws, demo_tx):
    """A second socket of the same center, whose user did not change, still gets the center's events."""
    moved, other = await ws.connect(DISPATCHER), await ws.connect(HQ)
    for client in (moved, other):
        assert (await client.subscribe(GANGNAM))["type"] == "subscribed"
    await in_thread(move_staff, DISPATCHER, to="mapo")
    assert [f["type"] for f in await frames_before_pings(moved, 2)] == ["unsubscribed"]
    await in_thread(take_gangnam_order, demo_tx)
    assert (await other.recv())["event"] == "delivery.created"
