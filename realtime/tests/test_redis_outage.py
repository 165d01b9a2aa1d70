"""A Redis outage (issue 12, bug 3): events wait in the outbox and the log says so once, not per event.

Redis is made unreachable by pointing this process's bus at a closed port (`redis_outage`); the
shared Redis other test runs use keeps running.
"""

import logging
from datetime import timedelta

import pytest
from django.test import Client

from realtime import outbox
from realtime.models import Event
from tests.support import take_order


class Records(logging.Handler):
    """Collects the records of the `realtime` loggers (which do not propagate to the root)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def messages(self, text: str) -> list[str]:
        return [r.getMessage() for r in self.records if text in r.getMessage()]


@pytest.fixture
def realtime_log():
    handler = Records()
    logger = logging.getLogger("realtime")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def test_publishes_during_an_outage_log_redis_down_once_and_the_sweep_delivers_them_after(
    demo, redis_outage, realtime_log, django_capture_on_commit_callbacks
):
    """Every failed publish and sweep stays quiet after one "Redis is down"; one "Redis is back" follows."""
    order_ids = []
    for _ in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            order_ids.append(take_order(demo).pk)
    assert outbox.republish_unpublished(older_than=timedelta(seconds=-1)) == 0  # the sweep, during the outage
    events = Event.objects.filter(data__id__in=order_ids, name__in=["order.created", "delivery.created"])
    assert events.count() == 6 and not events.filter(published_at__isnull=False).exists()

    down = realtime_log.messages("Redis is down")
    assert len(down) == 1 and "Error" in down[0]  # the error is named once
    assert [r for r in realtime_log.records if r.exc_info] == []  # no traceback per event

    redis_outage.end()
    assert outbox.republish_unpublished(older_than=timedelta(seconds=-1)) >= 6
    assert not events.filter(published_at__isnull=True).exists()
    outbox.republish_unpublished(older_than=timedelta(seconds=-1))
    assert len(realtime_log.messages("Redis is back")) == 1
    assert len(realtime_log.messages("Redis is down")) == 1


def test_presence_api_answers_503_with_retry_after_while_redis_is_down(demo, redis_outage):
    """Presence lives only in Redis: during an outage HQ gets 503 and when to retry, not a 500."""
    client = Client()
    client.force_login(demo.user("hq"))

    response = client.get("/api/v1/ops/presence")

    assert response.status_code == 503
    assert int(response["Retry-After"]) > 0
    assert "Redis" in response.json()["detail"]
