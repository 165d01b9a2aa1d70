"""Bad input over HTTP (issue 12, bug 6): every case is a clear 4xx or a page, never a 500.

Each body is sent as raw text, because the values are ones Python's json module would not write
(a lone surrogate escape, a 401-digit number) or would write differently.
"""

from __future__ import annotations

import json

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# -- fuzzing the API's JSON bodies -----------------------------------------------------------------

BODY_FIELDS = [
    "positions",
    "lat",
    "lng",
    "ts",
    "namespace",
    "room",
    "event",
    "data",
    "text",
    "client_msg_id",
    "shop",
    "customer_name",
    "customer_phone",
    "address",
    "items",
    "promised_at",
    "rider",
    "on_duty",
    "version",
    "reason",
]
lone_surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
texts = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=lone_surrogates, min_size=1, max_size=2),
    st.sampled_from(["chat", "gangnam", "chat.message", "notice", "2026-12-03T10:00:00Z", "9999-12-31T23:59:59Z"]),
)
numbers = st.one_of(
    st.integers(min_value=-(10**420), max_value=10**420),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-1, max_value=100),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, texts),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.sampled_from(BODY_FIELDS), texts), inner, max_size=5)
    ),
    max_leaves=12,
)


def command_bodies(**plausible) -> st.SearchStrategy[str]:
    """A command's body: its fields, each either a plausible value or any JSON-ish one, as JSON text."""
    fields = {name: st.one_of(st.just(value), json_values) for name, value in plausible.items()}
    return st.fixed_dictionaries({}, optional=fields).map(json.dumps)


fix = st.fixed_dictionaries(
    {},
    optional={name: st.one_of(numbers, json_values) for name in ("lat", "lng", "accuracy", "heading", "speed", "ts")},
)
COMMAND_BODIES = {
    "/positions": st.lists(fix, max_size=3).map(lambda fixes: json.dumps({"positions": fixes})),
    "/publish": command_bodies(
        namespace="chat", room="gangnam", event="chat.message", data={"text": "hi", "client_msg_id": "m1"}
    )
    | st.fixed_dictionaries(
        {"namespace": st.just("chat"), "room": st.just("gangnam"), "event": st.just("chat.message")},
        optional={"data": st.fixed_dictionaries({}, optional={"text": texts, "client_msg_id": texts})},
    ).map(json.dumps),
    "/orders": command_bodies(
        shop=1,
        customer_name="Kim",
        customer_phone="010-1234-5678",
        address="Teheran-ro 1",
        items=[{"name": "Tteokbokki", "qty": 1}],
        promised_at="2026-12-03T12:00:00Z",
    ),
    "/deliveries/1/assign": command_bodies(rider=1, version=1),
    "/orders/1/cancel": command_bodies(reason="customer", version=1),
    "/deliveries/1/pickup": command_bodies(version=1),
    "/riders/1/duty": command_bodies(on_duty=True, version=1),
}
generic_bodies = st.one_of(
    json_values.map(json.dumps),
    st.integers(min_value=1, max_value=3000).map(lambda depth: "[" * depth + "]" * depth),
    st.text(max_size=30),
)
calls = st.sampled_from(sorted(COMMAND_BODIES)).flatmap(
    lambda command: st.tuples(st.just(command), st.one_of(COMMAND_BODIES[command], generic_bodies))
)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(call=calls)
def test_fuzzed_api_bodies_never_answer_500(demo, no_live_positions, call):
    """Arbitrary JSON-ish bodies to the API's commands, as a rider and as HQ: always a 2xx or 4xx, never a 500."""
    command, body = call
    for username in ("rider-gangnam-01", "hq"):
        response = post_text(logged_in(demo, username), f"{API}{command}", body)
        assert response.status_code < 500, (username, command, body[:200], response.content[:300])
