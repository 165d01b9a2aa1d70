"""Schemathesis against /api/v1/openapi.json: no input gives a 500 or a status the schema omits.

Every operation of the schema is called in process (WSGI) with generated valid and invalid input,
once as a logged-in session user (HQ, with the CSRF token) and once with an API token allowed
every command and stream. Bounded and repeatable: few examples per operation, derandomized.
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import Client
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, status_code_conformance
from werkzeug.test import Client as WsgiClient

from realtime.admin import TOKEN_COMMANDS
from tests.support import make_token

CSRF_SECRET = "a" * 32  # Django accepts its unmasked 32-character secret as the header token
CHECKS = [not_a_server_error, status_code_conformance]


# Loaded at collection (Django is set up by then; serving the schema reads no database). The
# fixture-loaded form, `schemathesis.pytest.from_fixture`, does not run under pytest 9.
WSGI_APP = get_wsgi_application()
schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", WSGI_APP)


@pytest.fixture(autouse=True)
def _requests_inside_the_test_transaction(demo, no_live_positions):
    """Django closes the database connection after each request; its test client turns that off,
    and so must we, or the first request would end the test's transaction."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def session_credentials(demo) -> dict:
    client = Client()
    client.force_login(demo.user("hq"))
    cookies = {"sessionid": client.cookies["sessionid"].value, "csrftoken": CSRF_SECRET}
    credentials = {"cookies": cookies, "headers": {"X-CSRFToken": CSRF_SECRET}}
    assert_accepted(credentials)
    return credentials


@pytest.fixture
def token_credentials(demo) -> dict:
    _, raw = make_token("schemathesis", commands=[name for name, _ in TOKEN_COMMANDS], streams=["*"])
    credentials = {"headers": {"Authorization": f"Bearer {raw}"}}
    assert_accepted(credentials)
    return credentials


def assert_accepted(credentials: dict) -> None:
    """The run means nothing if every call is a 401: check the credentials work, as a command would."""
    # Through the same WSGI app as the run (Django's test client would skip the CSRF check).
    client = WsgiClient(WSGI_APP)
    for name, value in credentials.get("cookies", {}).items():
        client.set_cookie(name, value, domain="localhost")
    response = client.post("/api/v1/publish", json={}, headers=credentials["headers"])
    assert response.status_code == 422, response.get_data()  # past authentication and CSRF, to validation


BOUNDED = settings(
    max_examples=5,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@schema.parametrize()
@BOUNDED
def test_api_as_a_session_user_never_500s_nor_answers_undocumented_statuses(case, session_credentials):
    """Called as HQ with a session: every answer is a documented status, never a 500."""
    case.call_and_validate(
        headers={**(case.headers or {}), **session_credentials["headers"]},
        cookies=session_credentials["cookies"],
        checks=CHECKS,
    )


@schema.parametrize()
@BOUNDED
def test_api_with_a_token_never_500s_nor_answers_undocumented_statuses(case, token_credentials):
    """Called with an all-scopes API token: every answer is a documented status, never a 500."""
    case.call_and_validate(headers={**(case.headers or {}), **token_credentials["headers"]}, checks=CHECKS)
