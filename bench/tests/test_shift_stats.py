"""The shift benchmark's measuring parts: seq tracking (gaps, duplicates, lost), latencies, percentiles, CPU %,
and what a dashboard client does with the server's frames (fed to it directly, no server)."""

import datetime as dt
import json
import time

import pytest

from bench import shiftclient
from bench.shift import cpu_pct, merge_hists, p_ms, pin_plan, tokens_per_center
from bench.shiftclient import SeqTrack, ShiftClient, Totals, add_ms, parse_ts


def test_a_client_that_got_every_seq_once_lost_nothing():
    track = SeqTrack(head=10)
    for seq in (11, 12, 13):
        track.see(seq)
    assert (track.gaps, track.dups, track.lost(13)) == (0, 0, 0)


def test_a_skipped_seq_is_a_gap_and_counts_as_lost():
    track = SeqTrack(head=0)
    for seq in (1, 2, 5):
        track.see(seq)
    assert track.gaps == 2
    assert track.lost(5) == 2


def test_a_repeated_or_older_seq_is_a_duplicate_not_an_event():
    track = SeqTrack(head=3)
    for seq in (4, 4, 2, 5):
        track.see(seq)
    assert (track.dups, track.received, track.gaps) == (2, 2, 0)


def test_events_after_the_last_one_received_count_as_lost_at_the_final_head():
    track = SeqTrack(head=7)
    track.see(8)
    assert track.lost(10) == 2  # 9 and 10 never arrived


def test_latency_histograms_merge_and_give_upper_bucket_edges():
    a, b = {}, {}
    for seconds in (0.0104, 0.0109, 0.020):
        add_ms(a, seconds)
    add_ms(b, 0.5)
    hist = merge_hists([{str(k): v for k, v in a.items()}, b])  # JSON made the keys strings
    assert hist == {10: 2, 20: 1, 500: 1}
    assert p_ms(hist, 50) == 11.0
    assert p_ms(hist, 99) == 501.0
    assert p_ms({}, 50) is None


def test_negative_and_huge_latencies_are_clamped_into_the_histogram():
    hist = {}
    add_ms(hist, -0.003)  # a clock step: counted as 0 ms, not dropped
    add_ms(hist, 3600)
    assert hist == {0: 1, 60_000: 1}


def test_frame_timestamps_parse_with_z_or_offset():
    assert parse_ts("2026-12-03T09:34:36.433Z") == parse_ts("2026-12-03T09:34:36.433+00:00")
    assert parse_ts("1970-01-01T00:00:01.500Z") == 1.5


def test_cpu_percent_counts_processes_that_started_between_samples():
    before = {1: 10.0, 2: 5.0}
    after = {1: 10.5, 2: 5.5, 3: 1.0}  # pid 3: a PostgreSQL backend that started meanwhile
    assert cpu_pct(before, after, wall=2.0) == 100 * 2.0 / 2.0
    assert cpu_pct(before, after, wall=0) == 0.0


def test_three_servers_are_not_pinned_without_a_core_each_plus_one(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert pin_plan(3, enabled=True).startswith("not pinned (2 cores")
    assert pin_plan(1, enabled=False) == "not pinned"


def dashboard(sample: bool) -> ShiftClient:
    """A dashboard client as the worker builds it, its outgoing frames captured instead of sent."""
    frames = [{"type": "subscribe", "id": s, "stream": f"{s}:gangnam"} for s in ("deliveries", "riders", "positions")]
    config = json.dumps({"role": "dashboard", "frames": frames, "sample": sample})
    client = ShiftClient(0, "bros", "ws://127.0.0.1:1/ws/v1/", {}, True, config)
    client.sent = []
    client.send_text = client.sent.append
    return client


def event(stream: str, seq: int | None, ts: float, data: dict | None = None) -> bytes:
    name = "rider.positions" if stream.startswith("positions:") else "delivery.created"
    frame = {"type": "event", "stream": stream, "event": name, "ts": iso(ts), "data": data or {}}
    if seq is not None:
        frame["seq"] = seq
    return json.dumps(frame, separators=(",", ":")).encode()


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture
def totals(monkeypatch):
    fresh = Totals()
    monkeypatch.setattr(shiftclient, "TOTALS", fresh)
    return fresh


async def test_a_dashboard_subscribes_to_its_three_streams_one_after_the_other(totals):
    client = dashboard(sample=False)
    assert json.loads(client.subscribe)["stream"] == "deliveries:gangnam"  # sent by the handshake
    client.on_text(b'{"type":"subscribed","id":"deliveries","stream":"deliveries:gangnam","epoch":"e","head":4}')
    client.on_text(b'{"type":"subscribed","id":"riders","stream":"riders:gangnam","epoch":"e","head":0}')
    assert [json.loads(f)["stream"] for f in client.sent] == ["riders:gangnam", "positions:gangnam"]
    assert not client.ready.done()
    client.on_text(b'{"type":"subscribed","id":"positions","stream":"positions:gangnam","recovered":false}')
    assert client.ready.done()
    assert {s: t.start for s, t in client.streams.items()} == {"deliveries:gangnam": 4, "riders:gangnam": 0}


async def test_delivery_events_give_command_latency_and_seq_tracking(totals):
    client = dashboard(sample=False)
    client.on_text(b'{"type":"subscribed","id":"deliveries","stream":"deliveries:gangnam","epoch":"e","head":4}')
    now = time.time()
    client.on_text(event("deliveries:gangnam", 5, now - 0.050))
    client.on_text(event("deliveries:gangnam", 7, now - 0.050))
    assert sum(totals.cmd.values()) == 2
    assert min(totals.cmd) >= 49  # about 50 ms (truncated to the millisecond, plus the test's own time)
    track = client.streams["deliveries:gangnam"]
    assert (track.received, track.gaps, track.lost(7)) == (2, 1, 1)


async def test_positions_count_only_on_sampled_dashboards_and_only_once_measuring(totals):
    now = time.time()
    frame = event("positions:gangnam", None, now, {"positions": [{"rider": 1, "ts": iso(now - 0.3)}]})
    plain, sampled = dashboard(sample=False), dashboard(sample=True)
    sampled.on_text(frame)  # the snapshot a subscriber gets before the riders start
    assert totals.pos == {}
    totals.measuring = True
    plain.on_text(frame)
    sampled.on_text(frame)
    assert totals.position_frames == 3
    assert sum(totals.pos.values()) == 1
    assert min(totals.pos) >= 299


async def test_a_server_ping_is_answered_with_a_pong(totals):
    client = dashboard(sample=False)
    client.on_text(b'{"type":"ping","heads":{"deliveries:gangnam":3}}')
    assert client.sent == [b'{"type":"pong"}']


def test_no_token_sends_more_than_half_its_command_allowance():
    assert tokens_per_center(30) == 2  # 30/s over 3 centers: 2 tokens each, 5/s per token
    assert tokens_per_center(31) == 3
    assert tokens_per_center(5) == 1
