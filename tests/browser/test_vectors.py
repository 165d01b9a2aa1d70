"""The browser's copies of server rules, loaded as ES modules in headless Chromium, against the shared vectors.

The same files pin the server: deliveries/tests/test_urgency_vectors.py (urgency) and
riders/tests/test_ranking_vectors.py (rider ranking and reasons). The browser runs in another time
zone and locale than the deployment, as a dispatcher's laptop may.
"""

from __future__ import annotations

import json

import pytest

from .conftest import CHROMIUM, ROOT, WAIT

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)

# django_db: the live server serving the modules needs this run's test database to exist; transactional
# like the other browser tests, so no connection of this process is left inside a transaction at teardown.
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

URGENCY = json.loads((ROOT / "deliveries" / "tests" / "vectors" / "urgency.json").read_text())
RANKING = json.loads((ROOT / "riders" / "tests" / "vectors" / "ranking.json").read_text())

URGENCY_OF_CASES = """async (vectors) => {
  const { urgencyOf } = await import("/static/deliveries/urgency.js");
  const now = Date.parse(vectors.now);
  const sla = { now, unassignedMinutes: vectors.settings.sla_unassigned_minutes };
  return Object.fromEntries(vectors.cases.map((c) => {
    const created = now - c.created_s_ago * 1000;
    const ready = created + vectors.shop_prep_minutes * 60000;
    const promised = now + c.promised_in_s * 1000;
    return [c.name, urgencyOf({ status: c.status, created, ready, promised }, sla)];
  }));
}"""

# Riders in the shape the board keeps them (rider_board_rows plus `ts`, epoch ms of the fix).
RANK_CASE = """async ({ vectors, ranking }) => {
  const { rankRiders } = await import("/static/deliveries/suggest.js");
  const now = Date.parse(vectors.now);
  const weights = { ...vectors.weights, ...vectors.settings, ...(ranking.settings || {}) };
  const riders = ranking.riders.map((r) => ({
    id: r.id, name: r.name, load: r.load, lat: r.lat, lng: r.lng,
    status: !r.on_duty ? "offline" : r.load ? "busy" : "available",
    ts: r.gps_age_s == null || r.lat == null ? null : now - r.gps_age_s * 1000,
  }));
  return rankRiders(riders, { lat: ranking.pickup.lat, lng: ranking.pickup.lng, now, weights })
    .map((c) => ({ id: c.rider.id, stale: c.stale, reason: c.reason }));
}"""

FORMAT_REASONS = """async (vectors) => {
  const { formatReason } = await import("/static/deliveries/suggest.js");
  const now = Date.parse(vectors.now);
  const weights = { ...vectors.weights, ...vectors.settings };
  return vectors.reasons.map((c) => formatReason(
    { distanceKm: c.distance_km, load: c.load, ageS: c.gps_age_s, stale: c.stale,
      ts: c.gps_age_s == null ? null : now - c.gps_age_s * 1000 },
    { now, weights },
  ));
}"""


@pytest.fixture(scope="module")
def page(browser, live_server_url):
    """A page of the live server (so the modules load from /static/) in New York time with a US locale."""
    context = browser.new_context(base_url=live_server_url, timezone_id="America/New_York", locale="en-US")
    context.set_default_timeout(WAIT)
    page = context.new_page()
    page.js_errors = []
    page.on("pageerror", lambda error: page.js_errors.append(str(error)))
    page.goto("/accounts/login/")
    yield page
    context.close()
    assert not page.js_errors, f"JavaScript errors on the page: {page.js_errors}"


def test_urgency_js_matches_every_vector(page):
    """urgency.js gives each vector case the level the server's SQL gives it."""
    got = page.evaluate(URGENCY_OF_CASES, URGENCY)
    assert got == {case["name"]: case["urgency"] for case in URGENCY["cases"]}


@pytest.mark.parametrize("ranking", RANKING["rankings"], ids=lambda ranking: ranking["name"])
def test_rank_riders_js_matches_ranking_vector(page, ranking):
    """suggest.js ranks, marks stale and explains the case's riders exactly as suggest_riders does."""
    assert page.evaluate(RANK_CASE, {"vectors": RANKING, "ranking": ranking}) == ranking["ranked"]


def test_format_reason_js_matches_reason_vectors(page):
    """suggest.js words distances, loads and GPS ages as format_reason does, rounding edges included."""
    assert page.evaluate(FORMAT_REASONS, RANKING) == [case["reason"] for case in RANKING["reasons"]]


def test_browser_under_test_is_in_another_time_zone_than_the_deployment(page):
    """The page's own clock is not the deployment's, so a reason written in the browser's zone would fail."""
    browser_zone = page.evaluate("() => Intl.DateTimeFormat().resolvedOptions().timeZone")
    assert browser_zone == "America/New_York" != RANKING["settings"]["time_zone"]
