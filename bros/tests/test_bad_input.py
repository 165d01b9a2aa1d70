"""Bad input over HTTP (issue 12, bug 6): every case is a clear 4xx or a page, never a 500.

Each body is sent as raw text, because the values are ones Python's json module would not write
(a lone surrogate escape, a 401-digit number) or would write differently.
"""

from __future__ import annotations

import pytest
from django.test import Client

from core import strict_input
from realtime.models import Event

API = "/api/v1"
LAT_401_DIGITS = "9" * 401
DEEP = "[" * 5000 + "]" * 5000


def logged_in(demo, username: str) -> Client:
    """A session client whose failures come back as responses (a 500 is a status, not an exception)."""
    client = Client(raise_request_exception=False)
    client.force_login(demo.user(username))
    return client


def post_text(client: Client, url: str, text: str):
    return client.post(url, text.encode(), content_type="application/json")


def test_positions_401_digit_lat_is_400(demo, no_live_positions):
    """A fix whose `lat` is a 401-digit integer (float overflow) is refused as bad JSON, not a 500."""
    client = logged_in(demo, "rider-gangnam-01")
    response = post_text(client, f"{API}/positions", f'{{"positions": [{{"lat": {LAT_401_DIGITS}, "lng": 127.0}}]}}')
    assert response.status_code == 400, response.content


def test_publish_lone_surrogate_in_client_msg_id_is_400_and_nothing_is_logged(demo):
    """A chat message whose `client_msg_id` holds a lone surrogate (jsonb refuses it) is 400; no event is written."""
    client = logged_in(demo, "dispatch-gangnam")
    before = Event.objects.filter(stream="chat:gangnam").count()
    body = (
        '{"namespace": "chat", "room": "gangnam", "event": "chat.message",'
        ' "data": {"text": "hi", "client_msg_id": "\\ud800"}}'
    )
    response = post_text(client, f"{API}/publish", body)
    assert response.status_code == 400, response.content
    assert Event.objects.filter(stream="chat:gangnam").count() == before


@pytest.mark.parametrize(
    "body",
    [DEEP, '{"positions": [{"lat": NaN, "lng": 127}]}', '{"positions": [{"lat": 1e999, "lng": 127}]}'],
    ids=["nested-5000-deep", "nan", "overflowing-float"],
)
def test_positions_body_that_is_not_strict_json_is_400(demo, no_live_positions, body):
    """Nesting 5,000 deep, NaN and a float beyond a double are all 400 "Cannot parse request body"."""
    client = logged_in(demo, "rider-gangnam-01")
    response = post_text(client, f"{API}/positions", body)
    assert response.status_code == 400, response.content


@pytest.mark.parametrize(
    "query",
    ["offset=²", "limit=²", "rider=²", "offset=" + "9" * 5000, "limit=" + "9" * 30, "rider=" + "9" * 30, "q=%23²"],
)
def test_board_rows_odd_numbers_in_the_query_are_ignored_not_500(demo, query):
    """`²` (which isdigit() accepts and int() refuses) and numbers beyond a bigint mean the default, not a 500."""
    client = logged_in(demo, "dispatch-gangnam")
    response = client.get(f"/dispatch/gangnam/rows/?{query}")
    assert response.status_code == 200, (query, response.status_code)


def test_board_page_rider_superscript_two_is_ignored_not_500(demo):
    """The board page with `?rider=²` renders, unfiltered by rider, like any other non-number."""
    client = logged_in(demo, "dispatch-gangnam")
    assert client.get("/dispatch/gangnam/?rider=²").status_code == 200


@pytest.mark.parametrize(
    "url", ["/dispatch/gang%00nam/", "/dispatch/gang%00nam/rows/", "/dispatch/gang%00nam/deliveries/1/"]
)
def test_board_urls_with_a_nul_in_the_center_code_are_404(demo, url):
    """A NUL byte in the center code of a board URL (PostgreSQL refuses it in a query) is 404."""
    client = logged_in(demo, "dispatch-gangnam")
    assert client.get(url).status_code == 404


def test_whole_number_accepts_ascii_digits_only_and_caps():
    """whole_number: ASCII digits (capped at the maximum, even 5,000 of them); "²", "٣", "-1", "" are refused."""
    assert strict_input.whole_number("0042", maximum=100) == 42
    assert strict_input.whole_number("9" * 5000, maximum=100) == 100
    for text in ("²", "٣", "-1", "", " 1", "1.0"):
        with pytest.raises(strict_input.StrictInputError):
            strict_input.whole_number(text, maximum=100)


@pytest.mark.parametrize(
    ("url", "status"),
    [
        (f"{API}/shops?center=gang%00nam", 404),
        (f"{API}/riders?center=gang%00nam", 404),
        (f"{API}/deliveries?center=gang%00nam", 404),
        (f"{API}/streams/chat:gang%00nam/snapshot", 404),
        (f"{API}/deliveries?center=gangnam&offset={'9' * 30}", 422),
        (f"{API}/streams/chat:gangnam/events?since=²", 422),
    ],
)
def test_api_query_with_nul_or_odd_numbers_is_4xx(demo, url, status):
    """A NUL in a center code is 404 like any unknown center; an offset beyond a bigint or "²" is 422."""
    response = logged_in(demo, "hq").get(url)
    assert response.status_code == status, (url, response.status_code, response.content[:200])
