"""Structured logs (core/log_context.py): request and connection ids on records, rate-limited mails."""

from __future__ import annotations

import json
import logging

import pytest
from django.test import AsyncClient, Client

from core.log_context import ContextFilter, JsonFormatter, RateLimitedAdminEmailHandler, connection_id
from realtime.tests.wsclient import release_db_connections


class Records(logging.Handler):
    """Collect records as the console handler sees them (after the context filter)."""

    def __init__(self):
        super().__init__()
        self.addFilter(ContextFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def bus_log():
    handler = Records()
    logger = logging.getLogger("realtime.bus")
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)


async def test_log_record_of_a_request_carries_its_request_id(demo, redis_outage, bus_log):
    """A line logged deep in a request (Redis down, in a worker thread) names the request it came from."""
    client = AsyncClient()
    try:
        await client.aforce_login(await demo_user("hq"))
        response = await client.get("/api/v1/ops/presence")
    finally:
        await release_db_connections()
    assert response.status_code == 503
    request_id = response["X-Request-ID"]
    assert len(request_id) == 16
    assert [r.request_id for r in bus_log if "Redis is down" in r.getMessage()] == [request_id]


async def demo_user(username):
    from django.contrib.auth import get_user_model

    return await get_user_model().objects.aget(username=username)


def test_request_id_from_the_proxy_is_kept_when_sane_and_replaced_otherwise(db):
    client = Client()
    assert client.get("/accounts/login/", headers={"X-Request-ID": "lb-42.abc"})["X-Request-ID"] == "lb-42.abc"
    replaced = client.get("/accounts/login/", headers={"X-Request-ID": "bad id\nwith newline"})["X-Request-ID"]
    assert replaced != "bad id\nwith newline" and len(replaced) == 16
    assert client.get("/accounts/login/")["X-Request-ID"] != client.get("/accounts/login/")["X-Request-ID"]


def test_log_record_outside_a_request_has_placeholders_and_connection_id_when_set():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    ContextFilter().filter(record)
    assert (record.request_id, record.connection_id) == ("-", "-")
    token = connection_id.set("host-1-abc-7")
    try:
        ContextFilter().filter(record)
    finally:
        connection_id.reset(token)
    assert record.connection_id == "host-1-abc-7"
    line = json.loads(JsonFormatter().format(record))
    assert (line["message"], line["connection_id"], line["level"]) == ("hello there", "host-1-abc-7", "INFO")


def test_error_mails_repeat_a_message_at_most_once_per_interval_and_cap_per_hour():
    handler = RateLimitedAdminEmailHandler(per_message=600, per_hour=3)

    def record(msg):
        return logging.LogRecord("realtime.hub", logging.ERROR, __file__, 1, msg, (), None)

    assert handler.allow(record("boom %s"), now=0)
    assert not handler.allow(record("boom %s"), now=10)
    assert handler.allow(record("boom %s"), now=601)
    assert handler.allow(record("other"), now=602)
    assert not handler.allow(record("third"), now=603)  # three mails this hour already
    assert handler.allow(record("third"), now=3700)


def test_settings_route_request_errors_through_the_rate_limited_mailer():
    handlers = logging.getLogger("django.request").handlers
    assert any(isinstance(h, RateLimitedAdminEmailHandler) for h in handlers)


@pytest.fixture
async def ws(settings, demo_tx):
    from realtime.tests.wsclient import WsClients

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    clients = WsClients()
    yield clients
    await clients.shutdown()


async def test_log_record_of_a_websocket_connection_carries_its_connection_id(ws, monkeypatch):
    """A failure while handling one socket's frame is logged with that socket's connection id."""
    from realtime.consumers import PROCESS_ID, ProtocolConsumer

    async def broken_ping(self, frame, frame_id):
        raise RuntimeError("broken on purpose")

    monkeypatch.setitem(ProtocolConsumer._handlers, "ping", broken_ping)
    handler = Records()
    logger = logging.getLogger("realtime.consumers")
    logger.addHandler(handler)
    try:
        client = await ws.connect("dispatch-gangnam")
        reply = await client.request({"type": "ping", "id": "p"})
    finally:
        logger.removeHandler(handler)
    assert reply["type"] == "error" and reply["code"] == "internal"
    failures = [r for r in handler.records if r.getMessage().startswith("frame from")]
    assert len(failures) == 1
    assert failures[0].connection_id.startswith(PROCESS_ID) and failures[0].connection_id in failures[0].getMessage()
    assert failures[0].request_id == "-"


async def test_hub_started_by_a_connection_does_not_log_under_its_connection_id(ws, monkeypatch):
    """The hub's tasks outlive the socket that happened to start them: they carry no connection id."""
    import asyncio

    import realtime.hub

    seen = []

    async def record():
        seen.append(("task", connection_id.get()))

    def probe(hub):
        seen.append(("hook", connection_id.get()))
        hub.spawn(record(), name="probe")

    monkeypatch.setattr(realtime.hub, "_start_hooks", [*realtime.hub._start_hooks, probe])
    await ws.connect("dispatch-gangnam")
    async with asyncio.timeout(5):
        while len(seen) < 2:
            await asyncio.sleep(0.01)
    assert seen == [("hook", None), ("task", None)]


def test_log_record_of_a_celery_task_carries_the_task_id():
    from bros.celery import _task_log_context, _task_log_context_end
    from core.log_context import request_id

    record = logging.LogRecord("realtime.tasks", logging.INFO, __file__, 1, "swept", (), None)
    _task_log_context(task_id="abc-123")
    try:
        ContextFilter().filter(record)
    finally:
        _task_log_context_end()
    assert record.request_id == "task-abc-123"
    assert request_id.get() is None
