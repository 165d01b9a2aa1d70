"""`GET /healthz` (core/health.py): the load balancer's check of one process, in this process."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
from django.conf import settings as django_settings
from django.test import AsyncClient

pytestmark = pytest.mark.django_db


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_healthz_answers_ok_when_postgres_and_redis_answer(async_client):
    """With PostgreSQL and Redis up: 200 naming both ok, never cached, no session started."""
    response = await async_client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"db": "ok", "redis": "ok"}
    assert "no-cache" in response["Cache-Control"]
    assert django_settings.SESSION_COOKIE_NAME not in response.cookies


async def test_healthz_stays_up_naming_redis_down_when_redis_is_unreachable(async_client, settings):
    """Redis unreachable: still 200 (pages are served from PostgreSQL), with redis "down"."""
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"
    response = await async_client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"db": "ok", "redis": "down"}


async def test_healthz_refuses_other_methods_than_get_and_head(async_client):
    """A POST (even without a CSRF token) or a DELETE is 405; HEAD answers like GET, without a body."""
    strict = AsyncClient(enforce_csrf_checks=True)
    assert (await strict.post("/healthz")).status_code == 405
    assert (await strict.delete("/healthz")).status_code == 405
    head = await async_client.head("/healthz")
    assert head.status_code == 200 and head.content == b""


async def test_healthz_answers_down_at_once_while_the_last_database_probe_still_hangs(async_client, monkeypatch):
    """A hung PostgreSQL: 503 after the probe's timeout, then 503 at once while that probe hangs (no pile-up)."""
    from core import health

    release, calls = threading.Event(), []

    def hanging_database() -> bool:
        calls.append(1)
        release.wait(10)
        return True

    monkeypatch.setattr(health, "_database_answers", hanging_database)
    monkeypatch.setattr(health, "DATABASE_TIMEOUT", 0.2)
    try:
        first = await async_client.get("/healthz")
        second = await async_client.get("/healthz")
    finally:
        release.set()
    assert (first.status_code, first.json()["db"]) == (503, "down")
    assert (second.status_code, second.json()["db"]) == (503, "down")
    assert len(calls) == 1  # the second check did not start another probe behind the hung one
    await asyncio.wrap_future(health._in_flight["db"])
    assert (await async_client.get("/healthz")).json() == {"db": "ok", "redis": "ok"}
