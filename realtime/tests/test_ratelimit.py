"""Publish and command limits are per user and per token across sockets, HTTP and processes (Redis)."""

import pytest

from realtime.tests.test_api import API, logged_in, post_json, publish_body
from realtime.tests.test_consumer import is_error
from realtime.tests.wsclient import WsClients, in_thread
from tests.support import ORDER_FIELDS, bearer, make_token, take_order

DISPATCHER = "dispatch-gangnam"


@pytest.fixture
def burst_of_three(settings):
    settings.REALTIME_PUBLISH_BURST = 3
    settings.REALTIME_PUBLISH_RATE = 0.001  # no refill during a test: exact counts


async def publish(client, i: int) -> dict:
    frame = {"type": "publish", "id": f"p{i}", "stream": "chat:gangnam", "event": "chat.message"}
    return await client.request(frame | {"data": {"text": f"message {i}"}})


async def test_a_second_socket_of_the_same_user_shares_the_publish_limit(demo_tx, burst_of_three):
    """Two sockets of one user together get the burst once; a third socket's publish is rate_limited."""
    clients = WsClients()
    try:
        first, second = await clients.connect(DISPATCHER), await clients.connect(DISPATCHER)
        replies = [await publish(first, 0), await publish(second, 1), await publish(first, 2)]
        assert [r["type"] for r in replies] == ["ack"] * 3
        assert is_error(await publish(second, 3), "rate_limited", "p3")
        other = await clients.connect("hq")
        assert (await publish(other, 4))["type"] == "ack"  # another user has their own allowance
        assert await second.alive()
    finally:
        await clients.shutdown()


def test_http_publish_beyond_the_limit_is_429_with_retry_after(demo, burst_of_three):
    """POST /publish answers 429 `rate_limited` with Retry-After once the user's burst is spent."""
    client = logged_in(demo, DISPATCHER)
    statuses = [post_json(client, f"{API}/publish", publish_body()).status_code for _ in range(3)]
    assert statuses == [202] * 3
    refused = post_json(client, f"{API}/publish", publish_body())
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert int(refused["Retry-After"]) >= 1


async def test_http_and_socket_publishes_of_one_user_share_the_limit(demo_tx, burst_of_three):
    """The allowance lives in Redis: publishes over HTTP spend the same bucket as the socket's."""

    def three_over_http():
        client = logged_in(demo_tx, DISPATCHER)
        return [post_json(client, f"{API}/publish", publish_body()).status_code for _ in range(3)]

    assert await in_thread(three_over_http) == [202] * 3
    clients = WsClients()
    try:
        socket = await clients.connect(DISPATCHER)
        assert is_error(await publish(socket, 0), "rate_limited", "p0")
    finally:
        await clients.shutdown()


def test_token_publish_limit_is_per_token(demo, client, burst_of_three):
    """A token has its own bucket: spent, it gets 429; another token still publishes."""
    _, raw = make_token("bot-a", commands=["publish"], streams=["chat:*"])
    _, other = make_token("bot-b", commands=["publish"], streams=["chat:*"])

    def send(secret):
        body = publish_body(data={"text": "hi"})
        return client.post(f"{API}/publish", body, content_type="application/json", headers=bearer(secret))

    assert [send(raw).status_code for _ in range(3)] == [202] * 3
    assert send(raw).status_code == 429
    assert send(other).status_code == 202


@pytest.fixture
def three_commands(settings):
    settings.API_COMMAND_BURST = 3
    settings.API_COMMAND_RATE = 0.001  # no refill during a test: exact counts


def unassign_url(demo) -> str:
    """A command that is refused by state (409) every time: it still spends the allowance."""
    return f"{API}/deliveries/{take_order(demo).delivery.pk}/unassign"


def assert_rate_limited(response) -> None:
    assert response.status_code == 429, response.content
    assert response.json() == {"detail": "Too many commands; slow down.", "code": "rate_limited"}
    assert int(response["Retry-After"]) >= 1


def test_http_commands_beyond_a_users_allowance_are_429_with_retry_after(demo, three_commands):
    """A session user's fourth command is 429 `rate_limited`; another user still gets through."""
    url = unassign_url(demo)
    client = logged_in(demo, DISPATCHER)
    assert [post_json(client, url, {}).status_code for _ in range(3)] == [409] * 3
    assert_rate_limited(post_json(client, url, {}))
    order = ORDER_FIELDS | {"shop": demo.shop().pk}
    assert_rate_limited(post_json(client, f"{API}/orders", order))  # one allowance for every command
    assert post_json(logged_in(demo, "hq"), url, {}).status_code == 409


def test_http_commands_of_one_user_share_the_allowance_across_sessions(demo, three_commands):
    """Two sessions (browsers) of one user spend the same bucket: it is kept in Redis, per user."""
    url = unassign_url(demo)
    first, second = logged_in(demo, DISPATCHER), logged_in(demo, DISPATCHER)
    assert [post_json(c, url, {}).status_code for c in (first, second, first)] == [409] * 3
    assert_rate_limited(post_json(second, url, {}))


def test_http_commands_beyond_a_tokens_allowance_are_429(demo, client, three_commands):
    """A token has its own bucket: spent, it gets 429 with Retry-After; another token still works."""
    url = unassign_url(demo)
    scope = {"commands": ["deliveries.unassign"], "streams": ["deliveries:gangnam"]}
    _, raw = make_token("pos-a", **scope)
    _, other = make_token("pos-b", **scope)

    def send(secret):
        return client.post(url, {}, content_type="application/json", headers=bearer(secret))

    assert [send(raw).status_code for _ in range(3)] == [409] * 3
    assert_rate_limited(send(raw))
    assert send(other).status_code == 409


def test_http_commands_are_not_limited_while_redis_is_down(demo, three_commands, redis_outage):
    """Without Redis the allowance cannot be kept: commands go on (PostgreSQL is the truth)."""
    url = unassign_url(demo)
    client = logged_in(demo, DISPATCHER)
    assert [post_json(client, url, {}).status_code for _ in range(5)] == [409] * 5
