"""Protocol basics (protocol §3) over real sockets on both supported ASGI servers: uvicorn, the
default (`--ws realtime.uvicorn_protocol:WebSocketProtocol`), and daphne."""

from __future__ import annotations

import asyncio

import pytest
from websockets.exceptions import InvalidStatus

from tests.live.conftest import WsClient, bus_marker, create_orders, db

DELIVERIES = "deliveries:gangnam"


@pytest.fixture(params=["uvicorn", "daphne"])
async def server(request, live_servers):
    """One server process of each kind."""
    (started,) = await asyncio.to_thread(live_servers, 1, kind=request.param)
    return started


@pytest.fixture
async def cookie(session_cookie, demo_tx):
    return await db(session_cookie)("dispatch-gangnam")


async def refused_status(server, cookie, **kwargs) -> int:
    with pytest.raises(InvalidStatus) as refused:
        client = await WsClient.open(server, cookie, **kwargs)
        await client.close()
    return refused.value.response.status_code


async def test_handshake_refuses_anonymous_clients(server, demo_tx):
    """A handshake without a valid session is refused with HTTP 403 before accept."""
    assert await refused_status(server, None) == 403
    assert await refused_status(server, "not-a-session-key") == 403


async def test_handshake_refuses_a_foreign_or_missing_origin(server, cookie):
    """A logged-in user's handshake from a foreign origin, or with no Origin, is refused with HTTP 403."""
    assert await refused_status(server, cookie, origin="http://evil.example") == 403
    assert await refused_status(server, cookie, origin="") == 403


async def test_subscribe_answers_subscribed_with_epoch_and_head(server, cookie, ws_clients):
    """Subscribing answers `subscribed` with the stream's epoch and head, not recovered."""
    client = await ws_clients(server, cookie)
    frame = await client.subscribe(DELIVERIES)
    assert frame["recovered"] is False
    assert isinstance(frame["epoch"], str) and frame["epoch"]
    assert isinstance(frame["head"], int)


async def test_event_committed_after_subscribe_arrives(server, cookie, ws_clients):
    """An event committed after subscribing arrives once, with the next seq."""
    client = await ws_clients(server, cookie)
    head = (await client.subscribe(DELIVERIES))["head"]
    (order,) = await db(create_orders)(1)
    (event,) = await client.events(DELIVERIES, 1)
    assert event["seq"] == head + 1
    assert event["event"] == "delivery.created"
    assert event["data"]["id"] == order.delivery.pk
    assert await client.frames_until(await bus_marker(DELIVERIES)) == []


async def test_resume_with_since_recovers_the_missed_events(server, cookie, ws_clients):
    """Resubscribing with since+epoch answers recovered and replays exactly the events after since."""
    first = await ws_clients(server, cookie)
    subscribed = await first.subscribe(DELIVERIES)
    epoch, since = subscribed["epoch"], subscribed["head"]
    await first.close()
    await db(create_orders)(3)

    second = await ws_clients(server, cookie)
    frame = await second.subscribe(DELIVERIES, since=since, epoch=epoch)
    assert frame["recovered"] is True
    assert frame["head"] == since + 3
    assert [e["seq"] for e in await second.events(DELIVERIES, 3)] == [since + 1, since + 2, since + 3]
    assert await second.frames_until(await bus_marker(DELIVERIES)) == []


async def test_bad_json_is_answered_with_error_and_keeps_the_socket_open(server, cookie, ws_clients):
    """A frame that is not JSON gets `error` bad_request; the connection stays usable."""
    client = await ws_clients(server, cookie)
    await client.send("{not json")
    error = await client.expect("error", code="bad_request")
    assert error["id"] is None
    await client.send({"type": "ping", "id": "after-error"})
    await client.expect("pong", id="after-error")


async def test_ping_is_answered_with_pong(server, cookie, ws_clients):
    """A client `ping` is answered with `pong` carrying the same id."""
    client = await ws_clients(server, cookie)
    await client.send({"type": "ping", "id": "k1"})
    await client.expect("pong", id="k1")


async def test_uvicorn_frames_are_uncompressed_even_for_a_client_offering_compression(live_servers, cookie, ws_clients):
    """Every socket gets the same bytes for an event (framed once), so permessage-deflate is never
    negotiated; the client (which offers it) still reads every frame, multi-byte text included."""
    (server,) = await asyncio.to_thread(live_servers, 1, kind="uvicorn")
    clients = [await ws_clients(server, cookie) for _ in range(3)]
    for client in clients:
        assert "permessage-deflate" in client.ws.request.headers["Sec-WebSocket-Extensions"]
        assert "Sec-WebSocket-Extensions" not in client.ws.response.headers
        await client.subscribe(DELIVERIES)
    (order,) = await db(create_orders)(1)
    for client in clients:
        (event,) = await client.events(DELIVERIES, 1)
        assert event["data"]["id"] == order.delivery.pk
    for client in clients:
        await client.send({"type": "ping", "id": "배달"})
        await client.expect("pong", id="배달")
