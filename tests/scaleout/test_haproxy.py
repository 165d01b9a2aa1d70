"""Scale-out (issue 13) behind HAProxy running the shipped `deploy/haproxy.cfg` (its variables
pointing at three uvicorn processes started with the production command line): the scenario of
`tests/scaleout/scenario.py`, with HAProxy's own view (admin socket) checked against the processes'.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.chaos.test_chaos import wait_for
from tests.scaleout.scenario import QUIET, spread_kill_and_resume

# Three servers, a balancer and 30 clients start on a machine the rest of the suite loads too.
pytestmark = [pytest.mark.scaleout, pytest.mark.timeout(300)]


async def test_haproxy_spreads_clients_and_the_clients_of_a_killed_process_resume_through_it(chaos, haproxy):
    """30 clients spread over 3 processes by HAProxy; one SIGKILLed mid-commands: its clients resume, nothing lost."""
    servers = await chaos.servers(3, **QUIET)
    proxy = await asyncio.to_thread(haproxy, servers)  # returns once its /healthz checks find all three up
    await spread_kill_and_resume(chaos, proxy, servers, balancer_sessions=proxy.sessions)
    killed = servers[0]
    await wait_for(lambda: proxy.status()[killed.pid].startswith("DOWN"), 10, "HAProxy's check to mark it down")
