"""Login, each role's landing page, and who may open which page."""

import pytest
from django.urls import reverse


@pytest.mark.parametrize(
    ("username", "landing"),
    [
        ("hq", "/dispatch/"),
        ("admin", "/admin/"),
        ("callcenter", "/orders/"),
        ("dispatch-mapo", "/dispatch/mapo/"),
        ("rider-gangnam-01", "/rider/"),
    ],
)
def test_login_lands_each_role_on_its_page(client, demo, username, landing):
    """After logging in with the demo password each role lands on its own page, which opens."""
    response = client.post(reverse("login"), {"username": username, "password": "demo"}, follow=True)
    assert response.redirect_chain[-1][0] == landing
    assert response.status_code == 200


def test_login_with_a_wrong_password_shows_an_error(client, demo):
    """A wrong password keeps the user on the login page with a clear message."""
    response = client.post(reverse("login"), {"username": "hq", "password": "nope"})
    assert response.status_code == 200
    assert b"Wrong username or password" in response.content


def test_logout_returns_to_login(client, demo):
    """Logging out (POST) ends the session and shows the login page."""
    client.force_login(demo.user("hq"))
    response = client.post(reverse("logout"), follow=True)
    assert response.redirect_chain[-1][0] == reverse("login")
    assert client.get("/dispatch/").status_code == 302


@pytest.mark.parametrize("path", ["/", "/dispatch/", "/dispatch/gangnam/"])
def test_pages_send_anonymous_users_to_login(client, db, path):
    """Every page asks an anonymous visitor to log in."""
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize(
    ("username", "path"),
    [
        ("dispatch-gangnam", "/dispatch/mapo/"),
        ("dispatch-gangnam", "/dispatch/nowhere/"),
        ("dispatch-gangnam", "/dispatch/"),
        ("dispatch-gangnam", "/dispatch/mapo/rows/"),
        ("callcenter", "/dispatch/gangnam/"),
        ("rider-gangnam-01", "/dispatch/gangnam/"),
    ],
)
def test_pages_refuse_roles_and_centers_they_are_not_for(client, demo, username, path):
    """A page outside the user's role or centers answers 403 (an unknown center looks the same)."""
    client.force_login(demo.user(username))
    assert client.get(path).status_code == 403


def test_home_refuses_a_user_without_a_role(client, demo, django_user_model):
    """A user without a role is told to ask an admin instead of seeing an empty page."""
    client.force_login(django_user_model.objects.create_user("nobody", password="x"))
    response = client.get("/")
    assert response.status_code == 403
