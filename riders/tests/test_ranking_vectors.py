"""The server's rider ranking and reason text against the shared vectors.

The browser's copy (static/deliveries/suggest.js) is checked against the same file in
tests/browser/test_vectors.py, so the assign dialog ranks and explains riders as the server does.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.test import override_settings

from riders.models import Rider
from riders.services import set_rider_duty
from riders.suggestions import format_reason, scoring_params, suggest_riders

VECTORS = json.loads((Path(__file__).parent / "vectors" / "ranking.json").read_text())
NOW = datetime.fromisoformat(VECTORS["now"])


def deployment(case: dict | None = None):
    """The settings a vector case runs under: the file's, overridden by the case's."""
    values = VECTORS["settings"] | (case or {}).get("settings", {})
    return override_settings(RIDER_GPS_STALE_SECONDS=values["gps_stale_seconds"], TIME_ZONE=values["time_zone"])


def place_riders(case: dict) -> dict[int, int]:
    """Give the case's riders to Gangnam demo riders (in id order); return vector id → rider pk."""
    demo_riders = list(Rider.objects.filter(center__code="gangnam").order_by("pk")[: len(case["riders"])])
    pks = {}
    for spec, rider in zip(sorted(case["riders"], key=lambda r: r["id"]), demo_riders, strict=True):
        if spec["on_duty"]:
            set_rider_duty(actor=None, rider_id=rider.pk, on_duty=True)
        age = spec["gps_age_s"]
        Rider.objects.filter(pk=rider.pk).update(
            name=spec["name"],
            load=spec["load"],
            last_lat=spec["lat"],
            last_lng=spec["lng"],
            last_position_at=None if age is None or spec["lat"] is None else NOW - timedelta(seconds=age),
        )
        pks[spec["id"]] = rider.pk
    return pks


def test_ranking_vectors_use_the_server_weights_and_settings():
    """The weights and settings the vectors were written for are the ones the server ranks and explains with."""
    with deployment():
        assert scoring_params() == VECTORS["weights"] | VECTORS["settings"]


@pytest.mark.parametrize("case", VECTORS["rankings"], ids=lambda case: case["name"])
def test_suggest_riders_matches_ranking_vector(demo, case):
    """suggest_riders ranks the case's on-duty riders in the expected order, with the expected reasons."""
    Rider.objects.filter(center__code="gangnam").update(on_duty=False)
    pks = place_riders(case)
    by_pk = {pk: vector_id for vector_id, pk in pks.items()}
    pickup = case["pickup"]

    with deployment(case):
        ranked = suggest_riders(center_code="gangnam", lat=pickup["lat"], lng=pickup["lng"], now=NOW, positions={})

    assert [{"id": by_pk[s.rider_id], "stale": s.stale, "reason": s.reason} for s in ranked] == case["ranked"]


@pytest.mark.parametrize("case", VECTORS["reasons"], ids=lambda case: case["reason"])
def test_format_reason_matches_reason_vector(case):
    """format_reason words a distance, load and GPS age as the vector says (rounding, thresholds, units)."""
    age = case["gps_age_s"]
    with deployment():
        reason = format_reason(
            distance_km=case["distance_km"],
            load=case["load"],
            position_at=None if age is None else NOW - timedelta(seconds=age),
            age_s=age,
            stale=case["stale"],
            now=NOW,
        )
    assert reason == case["reason"]
