"""The fan-out benchmark's verdict logic: median and spread over runs, and when a ratio is called."""

from bench.fanout import (
    SUMMARY_HEADERS,
    before_after_rows,
    fmt_ratio,
    fmt_spread,
    ratio_call,
    spread,
    summary_rows,
    with_refs,
)


def test_spread_is_the_median_and_range_of_the_measured_runs():
    assert spread([30.0, None, 10.0, 20.0]) == {"median": 20.0, "min": 10.0, "max": 30.0, "n": 3}
    assert spread([4.0, 1.0]) == {"median": 2.5, "min": 1.0, "max": 4.0, "n": 2}
    assert spread([None]) is None


def test_a_single_run_prints_without_a_range():
    assert fmt_spread(spread([12.34]), ".1f") == "12.3"
    assert fmt_spread(spread([3.0, 1.0, 2.0]), ".0f") == "2 [1-3]"
    assert fmt_spread(None) == "-"


def test_a_ratio_is_called_only_when_the_spreads_do_not_overlap():
    bros, sio = spread([50.0, 52.0, 55.0]), spread([9.0, 10.0, 12.0])
    assert ratio_call(bros, sio) == (52.0 / 10.0, "called")
    assert fmt_ratio(bros, sio) == "5.20"


def test_overlapping_spreads_give_no_verdict_even_with_different_medians():
    a, b = spread([10.0, 14.0, 20.0]), spread([8.0, 11.0, 12.0])
    ratio, verdict = ratio_call(a, b)
    assert verdict == "not called (spreads overlap)"
    assert fmt_ratio(a, b) == f"({ratio:.2f}) not called (spreads overlap)"


def test_touching_spreads_overlap():
    assert ratio_call(spread([10.0, 12.0]), spread([12.0, 15.0]))[1] == "not called (spreads overlap)"


def test_one_run_is_never_enough_to_call_a_ratio():
    assert ratio_call(spread([50.0]), spread([10.0, 11.0]))[1] == "not called (1 run)"


def test_ref_variants_run_right_after_the_current_bros_uvicorn():
    order = with_refs(["bros-uvicorn", "bros-daphne", "socketio"], ["main~3", "abc123"])
    assert order == ["bros-uvicorn", "bros-uvicorn@main~3", "bros-uvicorn@abc123", "bros-daphne", "socketio"]
    assert with_refs(["socketio"], ["v1"]) == ["socketio"]
    assert with_refs(["socketio"], ["v1"], always=True) == ["socketio", "bros-uvicorn@v1"]


def run_row(variant: str, rep: int, us: float, max_per_s: float, *, pinned: bool = True) -> dict:
    """One throughput session as the runner records it (only the fields the tables read)."""
    step = {
        "delivered_per_s": max_per_s,
        "cpu_pct": {"server": 95.0, "server_core": 99.0, "client_core": 30.0, "client_core_over": False, "other": 5.0},
    }
    fixed = {
        "us_per_delivery": us,
        "received": 20000,
        "lost": 0,
        "extra": 0,
        "seq_dups": 0,
        "open": 1000,
        "clients": 1000,
        "pub_rate": 2.0,
        "last_client_p99_ms": 400.0,
        "rate": 2.0,
        "cpu_pct": {"client_core": 85.0 if rep == 2 else 10.0, "client_core_over": rep == 2, "other": 3.0},
    }
    return {
        "scenario": "throughput",
        "variant": variant,
        "n": 1000,
        "rep": rep,
        "pinned": pinned,
        "connect": {
            "n": 1000,
            "connected": 1000,
            "wall_s": 10.0,
            "p99_ms": 900.0,
            "rss_per_conn_kb": 37.0,
            "server_cpus_allowed": ["1"],
        },
        "fixed": fixed,
        "steps": [step],
        "sustained_per_s": max_per_s * 0.8,
    }


def test_before_vs_after_divides_this_tree_by_the_ref_and_calls_only_separated_spreads():
    rows = [run_row("bros-uvicorn", i, us, 20000.0 + i) for i, us in enumerate([20.0, 21.0, 22.0])]
    rows += [run_row("bros-uvicorn@main", i, us, 20000.0 + i) for i, us in enumerate([40.0, 41.0, 44.0])]
    [(ref, us, sustained, max_, connect, rss)] = before_after_rows(rows)
    assert ref == "main"
    assert us == "0.51"  # 21 / 41, spreads [20-22] and [40-44] apart
    assert max_ == "(1.00) not called (spreads overlap)"
    assert rss == "(1.00) not called (spreads overlap)"


def test_the_summary_flags_client_overload_and_names_a_shared_server_core():
    rows = [run_row("bros-uvicorn-2p", i, 30.0, 15000.0) for i in range(3)]
    [line] = summary_rows(rows)
    assert line[0] == "BROS hub, uvicorn 2 procs (2 ports) (shares a core)"
    assert line[1] == "cpu 1, 2 procs share it"
    assert line[SUMMARY_HEADERS.index("client core (all steps)")] == "max 85%: OVER 80% in 1/6 steps"
    unpinned = summary_rows([run_row("bros-uvicorn", 0, 30.0, 15000.0, pinned=False)])[0]
    assert unpinned[:2] == ["BROS hub, uvicorn 1 proc", "not pinned"]


def test_a_storm_that_ended_in_refusals_gives_no_storm_time_and_says_so():
    refused = run_row("bros-uvicorn@old", 0, 30.0, 15000.0)
    refused["connect"].update(connected=0, wall_s=3.5, p99_ms=None, rss_per_conn_kb=None)
    refused["fixed"].update(received=0, us_per_delivery=None)
    ok = run_row("bros-uvicorn@old", 1, 30.0, 15000.0)
    line = summary_rows([refused, ok])[0]
    assert line[SUMMARY_HEADERS.index("connect storm s")] == "10.00 (clients missing in 1/2 runs)"
    assert line[SUMMARY_HEADERS.index("fixed-rate srv CPU us/deliv")] == "30.0 (NOT kept up in 1/2 runs)"


def test_a_fixed_rate_step_is_kept_up_when_all_arrived_on_rate_however_slow():
    line = summary_rows([run_row("bros-daphne", 0, 80.0, 9000.0)])[0]  # p99 400 ms: slow, but kept up
    assert line[SUMMARY_HEADERS.index("fixed-rate srv CPU us/deliv")] == "80.0"
    assert line[SUMMARY_HEADERS.index("fixed-rate last-client p99 ms")] == "400"
    lossy = run_row("bros-daphne", 0, 80.0, 9000.0)
    lossy["fixed"]["lost"] = 3
    line = summary_rows([lossy])[0]
    assert line[SUMMARY_HEADERS.index("fixed-rate srv CPU us/deliv")] == "80.0 (NOT kept up in 1/1 runs)"
