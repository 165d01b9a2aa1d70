"""The ops monitor (`/ops/`, HQ only): who may see it, and the figures it reads from presence."""

from __future__ import annotations

import json
import time

import pytest
from django.test import Client

from realtime.bus import get_redis
from realtime.ops import ops_snapshot
from realtime.presence import ThreadHeartbeat, procs_key, record_last_run, samples_key


@pytest.fixture
def clean_presence():
    """No processes or samples of this run's prefix before and after the test."""

    def clean():
        redis = get_redis()
        keys = list(redis.scan_iter(match=f"{procs_key().rsplit(':', 1)[0]}:*", count=1000))
        if keys:
            redis.delete(*keys)

    clean()
    yield
    clean()


def page_for(demo, username: str, path: str = "/ops/"):
    client = Client()
    client.force_login(demo.user(username))
    return client.get(path)


@pytest.mark.parametrize("path", ["/ops/", "/ops/panel/"])
def test_ops_page_is_refused_to_every_role_but_hq(demo, clean_presence, path):
    for username in ("dispatch-gangnam", "callcenter", "rider-gangnam-01"):
        assert page_for(demo, username, path).status_code == 403
    anonymous = Client().get(path)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/accounts/login/")


def test_ops_page_for_hq_shows_health_and_an_empty_process_table(demo, clean_presence):
    response = page_for(demo, "hq")
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count("<h1") == 1
    assert 'data-figure="redis-ms"' in html and 'data-figure="postgres-ms"' in html
    assert "No process is heart-beating" in html
    assert 'hx-trigger="every 5s"' in html


def test_ops_panel_is_the_figures_alone(demo, clean_presence):
    html = page_for(demo, "hq", "/ops/panel/").content.decode()
    assert html.lstrip().startswith('<div id="ops-panel"') and "<h1" not in html


def test_ops_page_without_redis_still_answers_with_postgres_latency(demo, redis_outage):
    html = page_for(demo, "hq").content.decode()
    assert "Redis is unreachable" in html
    assert "down (ConnectionError)" in html
    assert 'data-figure="postgres-ms">down' not in html


def test_celery_heartbeat_shows_as_alive_and_a_clean_stop_is_not_flagged(db, clean_presence):
    worker = ThreadHeartbeat("worker", interval=15, ttl=45)
    worker.beat()
    record_last_run("reconcile_streams")
    snapshot = ops_snapshot()
    assert [p["id"] for p in snapshot["workers"]] == [worker.process_id]
    assert snapshot["workers"][0]["rss"] > 0
    assert snapshot["last_run_ages"]["reconcile_streams"] < 60
    assert snapshot["silent"] == []
    worker.stop()
    snapshot = ops_snapshot()
    assert snapshot["workers"] == [] and snapshot["silent"] == []


def test_process_that_stops_heart_beating_is_flagged(demo, clean_presence):
    """A process with samples in the last hour but no live key (its TTL ran out) is listed as silent."""
    now = time.time()
    sample = {"p": "web-dead-1", "kind": "web", "t": now - 120, "conns": 3, "events": 10}
    get_redis().zadd(samples_key(), {json.dumps(sample): now - 120})
    snapshot = ops_snapshot()
    assert [s["id"] for s in snapshot["silent"]] == ["web-dead-1"]
    html = page_for(demo, "hq").content.decode()
    assert "Stopped heart-beating" in html and "web-dead-1" in html


def test_ops_charts_and_rates_come_from_consecutive_samples(db, clean_presence):
    now = time.time()
    redis = get_redis()
    for i, (conns, events) in enumerate([(2, 0), (4, 300), (4, 600)]):
        t = now - 60 * (2 - i)
        sample = {"p": "web-a", "kind": "web", "t": t, "conns": conns, "events": events, "gap_repairs": i}
        redis.zadd(samples_key(), {json.dumps(sample): t})
    snapshot = ops_snapshot()
    assert snapshot["charts"]["connections"]["last"] == 4
    assert snapshot["charts"]["events"]["last"] == pytest.approx(5.0)
    assert snapshot["charts"]["connections"]["segments"]
    assert snapshot["last_hour"]["gap_repairs"] == 2


def test_ops_panel_queries_do_not_grow_with_processes_or_samples(demo, clean_presence, django_assert_num_queries):
    """The figures come from Redis: PostgreSQL sees the session, the user, its role and centers, and the timed ping."""
    client = Client()
    client.force_login(demo.user("hq"))
    client.get("/ops/panel/")
    with django_assert_num_queries(5) as few:
        client.get("/ops/panel/")
    for n in range(20):
        ThreadHeartbeat(f"worker{n}", interval=15, ttl=45).beat()
    with django_assert_num_queries(len(few.captured_queries)):
        assert client.get("/ops/panel/").content.decode().count("<tr data-process") == 20
