"""`GET /healthz` from a real server process whose PostgreSQL is unreachable: the balancer's 503."""

from __future__ import annotations

import asyncio

from tests.live.conftest import free_port, http_json


async def test_healthz_answers_503_naming_the_database_when_postgres_is_unreachable(live_servers):
    """A process that cannot reach PostgreSQL answers 503 with db "down" (its Redis still "ok")."""
    (server,) = await asyncio.to_thread(
        live_servers, 1, DATABASE_URL=f"postgres://postgres@127.0.0.1:{free_port()}/nowhere"
    )
    status, body = await asyncio.to_thread(http_json, server, "GET", "/healthz")
    assert (status, body) == (503, {"db": "down", "redis": "ok"})
