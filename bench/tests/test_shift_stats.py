"""The shift benchmark's pure parts: seq tracking (gaps, duplicates, lost), latency percentiles, CPU %."""

from bench.shift import cpu_pct, merge_hists, p_ms, pin_plan
from bench.shiftclient import SeqTrack, add_ms, parse_ts


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
