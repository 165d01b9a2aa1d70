"""Streams of centers and users that do not exist are refused, and never get a stream row."""

import pytest

from realtime.models import Stream
from realtime.tests.test_api import API, logged_in, post_json, publish_body
from tests.support import bearer, make_token


@pytest.mark.parametrize("stream", ["chat:nosuchcenter", "user:999999999"])
def test_publish_by_hq_to_a_missing_center_or_user_is_refused_without_a_stream_row(demo, stream):
    """HQ may publish to every center and user, but only real ones."""
    event = "chat.message" if stream.startswith("chat") else "notice"
    data = {"text": "hello"} if event == "chat.message" else {"title": "t", "text": "hello"}
    response = post_json(logged_in(demo, "hq"), f"{API}/publish", publish_body(stream, event, data))
    assert response.status_code in (403, 422), response.content
    assert not Stream.objects.filter(name=stream).exists()


def test_publish_by_token_with_a_namespace_scope_to_a_missing_center_is_422(demo, client):
    """A token scoped to "chat:*" still cannot create chat:nosuchcenter."""
    _, raw = make_token(commands=["publish"], streams=["chat:*"])
    body = publish_body("chat:nosuchcenter", data={"text": "hello"})
    response = client.post(f"{API}/publish", body, content_type="application/json", headers=bearer(raw))
    assert response.status_code == 422, response.content
    assert not Stream.objects.filter(name="chat:nosuchcenter").exists()


def test_publish_by_hq_to_a_real_center_is_202(demo):
    """The existence check refuses nothing real."""
    response = post_json(logged_in(demo, "hq"), f"{API}/publish", publish_body("chat:mapo", data={"text": "hi"}))
    assert response.status_code == 202, response.content


@pytest.mark.parametrize("part", ["snapshot", "events?since=0"])
def test_hq_reading_a_missing_center_is_refused_without_a_stream_row(demo, part):
    """Reading deliveries:nosuchcenter does not create its counter row."""
    response = logged_in(demo, "hq").get(f"{API}/streams/deliveries:nosuchcenter/{part}")
    assert response.status_code in (403, 404)
    assert not Stream.objects.filter(name="deliveries:nosuchcenter").exists()
