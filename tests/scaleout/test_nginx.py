"""Scale-out (issue 13) behind nginx running the shipped `deploy/nginx.conf` over TLS (only its
addresses and certificate paths replaced) in front of three uvicorn processes: the scenario of
`tests/scaleout/scenario.py`, with clients on `https://` and `wss://`.
"""

from __future__ import annotations

import asyncio
import http.client

import pytest

from tests.scaleout.scenario import QUIET, spread_kill_and_resume

# Three servers, a balancer and 30 clients start on a machine the rest of the suite loads too.
pytestmark = [pytest.mark.scaleout, pytest.mark.timeout(300)]


def plain_http_answer(port: int) -> tuple[int, str | None]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/dispatch/?x=1", headers={"Host": "127.0.0.1"})
        response = connection.getresponse()
        return response.status, response.getheader("Location")
    finally:
        connection.close()


async def test_nginx_spreads_clients_and_the_clients_of_a_killed_process_resume_through_it(chaos, nginx):
    """30 clients over TLS spread over 3 processes by nginx; one SIGKILLed mid-commands: its clients resume."""
    servers = await chaos.servers(3, **QUIET)
    proxy = await asyncio.to_thread(nginx, servers)
    assert await asyncio.to_thread(plain_http_answer, proxy.http_port) == (301, "https://127.0.0.1/dispatch/?x=1")
    await spread_kill_and_resume(chaos, proxy, servers)
