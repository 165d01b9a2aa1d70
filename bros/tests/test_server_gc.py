"""The ASGI server's garbage collector settings (bros.asgi.tune_garbage_collector)."""

from __future__ import annotations

import gc

import pytest
from channels.testing import ApplicationCommunicator

from bros.asgi import application

TIMEOUT = 10


@pytest.mark.django_db(transaction=True)
async def test_server_start_freezes_the_start_up_heap_and_makes_full_collections_rare(settings):
    settings.SERVER_GC_THRESHOLDS = [700, 10, 1000]
    gc.set_threshold(700, 10, 10)  # CPython's defaults
    gc.unfreeze()
    lifespan = ApplicationCommunicator(application, {"type": "lifespan"})
    await lifespan.send_input({"type": "lifespan.startup"})
    assert (await lifespan.receive_output(TIMEOUT))["type"] == "lifespan.startup.complete"

    assert gc.get_threshold() == (700, 10, 1000)
    assert gc.get_freeze_count() > 10_000  # Django and the apps, never collected again

    await lifespan.send_input({"type": "lifespan.shutdown"})
    assert (await lifespan.receive_output(TIMEOUT))["type"] == "lifespan.shutdown.complete"
