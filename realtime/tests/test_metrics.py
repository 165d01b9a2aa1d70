"""`/metrics` (docs/running.md): who may scrape it, and the real-time path's figures in it."""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys

import pytest
from django.test import Client

from realtime.metrics import ProcessStats, event_time, stats
from realtime.tests.wsclient import WsClients, emit_notices, in_thread

TOKEN = "scrape-secret-123"


@pytest.fixture
def metrics_token(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_IPS = []


def scrape(client: Client | None = None, **headers) -> str:
    response = (client or Client()).get("/metrics", headers={"Authorization": f"Bearer {TOKEN}", **headers})
    assert response.status_code == 200, response.status_code
    assert response["Content-Type"].startswith("text/plain")
    return response.content.decode()


def value(text: str, name: str, **labels) -> float:
    """The value of one sample in a scrape (0 when the series is absent)."""
    label_text = ",".join(f'{key}="{val}"' for key, val in sorted(labels.items()))  # as the client writes them
    pattern = re.escape(name) + (r"\{" + re.escape(label_text) + r"\}" if labels else r"(?:\{\})?") + r" (\S+)"
    found = re.search("^" + pattern + "$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_metrics_without_token_or_allowed_address_is_not_found(db, metrics_token):
    """No credentials, a wrong token, or a token in the wrong scheme: 404, as for an unknown URL."""
    client = Client()
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 404
    assert client.get("/metrics", headers={"Authorization": TOKEN}).status_code == 404
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}x"}).status_code == 404


def test_metrics_with_nothing_configured_is_not_found_even_with_an_empty_bearer(db, settings):
    settings.METRICS_TOKEN, settings.METRICS_ALLOWED_IPS = "", []
    assert Client().get("/metrics", headers={"Authorization": "Bearer "}).status_code == 404


def test_metrics_from_an_allowed_network_needs_no_token(db, settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_IPS = [ipaddress.ip_network("127.0.0.0/8")]
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 404


def test_metrics_counts_api_commands_by_outcome(demo, metrics_token):
    """A refused and an invalid command each land in their outcome's counter."""
    before = scrape()
    client = Client()
    client.force_login(demo.user("dispatch-gangnam"))
    missing = client.post(
        "/api/v1/deliveries/999999/assign", {"rider": 1, "version": 1}, content_type="application/json"
    )
    invalid = client.post("/api/v1/orders", "not json", content_type="application/json")
    assert (missing.status_code, invalid.status_code) == (404, 400)
    after = scrape()
    for outcome in ("not_found", "invalid"):
        grew = value(after, "bros_commands_total", via="http", outcome=outcome) - value(
            before, "bros_commands_total", via="http", outcome=outcome
        )
        assert grew == 1, outcome


def test_event_time_reads_the_ts_of_an_encoded_event_frame():
    frame = (
        '{"type":"event","stream":"chat:gangnam","seq":3,"event":"chat.message",'
        '"ts":"2026-01-02T03:04:05.500Z","data":{}}'
    )
    assert event_time(frame) == pytest.approx(1767323045.5)
    assert event_time('{"type":"reconcile","stream":"x"}') is None


def test_process_stats_sample_reports_lag_of_its_window_only():
    stats = ProcessStats()
    stats.delivered('{"type":"event","stream":"s","seq":1,"event":"e","ts":"2020-01-01T00:00:00.000Z"}', 3, logged=True)
    first = stats.sample()
    assert (first["events"], first["frames"]) == (1, 3)
    assert first["lag_max"] > 0
    second = stats.sample()
    assert (second["events"], second["lag_avg"], second["lag_max"]) == (1, None, None)


@pytest.fixture
async def ws(settings, demo_tx):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    clients = WsClients()
    yield clients
    await clients.shutdown()


async def test_metrics_scrape_shows_connections_events_and_publish_lag(ws, metrics_token):
    """After a socket connects and gets two events, a scrape shows them with values."""
    before = await in_thread(scrape)
    client = await ws.connect("dispatch-gangnam")
    assert (await client.subscribe("broadcast:all"))["type"] == "subscribed"
    await in_thread(emit_notices, 2)
    await client.events(2)
    stats.flush()  # what the hub does every second
    after = await in_thread(scrape)
    assert (
        value(after, "bros_ws_connections", role="dispatcher")
        == value(before, "bros_ws_connections", role="dispatcher") + 1
    )
    assert value(after, "bros_events_total") >= value(before, "bros_events_total") + 2
    assert value(after, "bros_frames_sent_total") >= value(before, "bros_frames_sent_total") + 2
    assert value(after, "bros_publish_lag_seconds_count") >= value(before, "bros_publish_lag_seconds_count") + 2
    for name in ("bros_gap_repairs_total", "bros_reconcile_mismatches_total", "bros_commands_total"):
        assert f"# TYPE {name} counter" in after
    await client.disconnect()
    gone = await in_thread(scrape)
    assert value(gone, "bros_ws_connections", role="dispatcher") == value(
        before, "bros_ws_connections", role="dispatcher"
    )


WRITER = """
import os, django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bros.settings")
django.setup()
from realtime.metrics import stats
stats.connected("hq")
stats.delivered('{"type":"event","stream":"s","seq":1,"event":"e","ts":"2020-01-01T00:00:00.000Z"}', 4, logged=True)
stats.flush()
print(os.getpid())
"""


def test_metrics_in_multiprocess_mode_sum_every_process_of_the_host(db, metrics_token, tmp_path, monkeypatch):
    """Two processes write to PROMETHEUS_MULTIPROC_DIR; one scrape shows both: summed counters, per-pid gauges."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    pids = [
        subprocess.run(
            [sys.executable, "-c", WRITER], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        for _ in range(2)
    ]
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    text = scrape()
    assert value(text, "bros_events_total") == 2
    assert value(text, "bros_frames_sent_total") == 8
    assert value(text, "bros_publish_lag_seconds_count") == 2
    for pid in pids:
        assert value(text, "bros_ws_connections", pid=pid, role="hq") == 1


def frame_at(ts: str) -> str:
    return '{"type":"event","stream":"s","seq":1,"event":"e","ts":"' + ts + '","data":{}}'


def test_flush_adds_batched_publish_lags_to_the_right_buckets(db, metrics_token):
    """Lags counted per event reach the histogram at the flush: each in its bucket, with their sum."""
    base = event_time(frame_at("2026-01-02T03:04:05.000Z"))
    process = ProcessStats()
    before = scrape()
    for lag in (0.004, 0.004, 0.2, 75.0):
        process.delivered(frame_at("2026-01-02T03:04:05.000Z"), 1, logged=True, now=base + lag)
    process.delivered(frame_at("2026-01-02T03:04:05.000Z"), 1, logged=False, now=base + 1)
    assert value(scrape(), "bros_publish_lag_seconds_count") == value(before, "bros_publish_lag_seconds_count")
    process.flush()
    after = scrape()

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("bros_publish_lag_seconds_bucket", le="0.005") == 2
    assert grew("bros_publish_lag_seconds_bucket", le="0.1") == 2
    assert grew("bros_publish_lag_seconds_bucket", le="0.25") == 3
    assert grew("bros_publish_lag_seconds_bucket", le="60.0") == 3
    assert grew("bros_publish_lag_seconds_bucket", le="+Inf") == 4
    assert grew("bros_publish_lag_seconds_count") == 4
    assert grew("bros_publish_lag_seconds_sum") == pytest.approx(75.208, abs=0.01)
    assert grew("bros_events_total") == 4 and grew("bros_frames_sent_total") == 5
    process.flush()  # nothing new: nothing added twice
    assert value(scrape(), "bros_publish_lag_seconds_count") == value(after, "bros_publish_lag_seconds_count")


def test_event_time_across_second_boundaries_and_bad_stamps():
    assert event_time(frame_at("2026-01-02T03:04:05.999Z")) + 0.002 == pytest.approx(
        event_time(frame_at("2026-01-02T03:04:06.001Z"))
    )
    assert event_time(frame_at("not-a-time-at-all-xxxxxx")) is None


async def test_lost_publish_counts_one_reconcile_mismatch_then_one_gap_repair(ws, demo_tx, settings, monkeypatch):
    """A publish lost on the bus: the next reconcile frame finds the hub behind, the next event makes it fill."""
    from realtime import outbox
    from realtime.reconcile import publish_reconcile_frames
    from tests.support import take_order

    settings.REALTIME_HEADS_INTERVAL = 3600  # only the gap fill may heal here
    client = await ws.connect("dispatch-gangnam")
    assert (await client.subscribe("deliveries:gangnam"))["type"] == "subscribed"
    demo = demo_tx
    before = stats.sample()
    original = outbox.publish
    monkeypatch.setattr(outbox, "publish", lambda events: True)  # committed, never published
    await in_thread(take_order, demo)
    monkeypatch.setattr(outbox, "publish", original)
    await in_thread(publish_reconcile_frames)
    reconcile = await client.recv()
    assert reconcile["type"] == "reconcile" and reconcile["head"] == 1
    await in_thread(take_order, demo)
    assert [e["seq"] for e in await client.events(2)] == [1, 2]
    after = stats.sample()
    assert after["reconcile_mismatches"] - before["reconcile_mismatches"] == 1
    assert after["gap_repairs"] - before["gap_repairs"] == 1


async def test_websocket_publish_frames_count_as_commands_by_outcome(ws, metrics_token):
    """An acked publish counts `ok`, a refused one its error's outcome; a ping is no command."""
    client = await ws.connect("dispatch-gangnam")
    before = await in_thread(scrape)
    assert (await client.publish("chat:gangnam", "chat.message", {"text": "hi"}))["type"] == "ack"
    assert (await client.publish("chat:mapo", "chat.message", {"text": "hi"}))["code"] == "forbidden"
    assert (await client.publish("chat:gangnam", "chat.message", {"text": ""}))["code"] == "bad_request"
    assert (await client.request({"type": "ping", "id": "x"}))["type"] == "pong"
    after = await in_thread(scrape)
    for outcome, n in (("ok", 1), ("forbidden", 1), ("invalid", 1), ("error", 0)):
        grew = value(after, "bros_commands_total", via="ws", outcome=outcome) - value(
            before, "bros_commands_total", via="ws", outcome=outcome
        )
        assert grew == n, outcome
