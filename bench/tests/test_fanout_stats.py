"""The fan-out benchmark's verdict logic: median and spread over runs, and when a ratio is called."""

from bench.fanout import fmt_ratio, fmt_spread, ratio_call, spread, with_refs


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
