"""The page shell: the navigation each role gets, and the styled error pages."""

from __future__ import annotations

import json
import re
import runpy

import pytest
from django.core.exceptions import PermissionDenied
from django.core.handlers.exception import response_for_exception
from django.test import RequestFactory
from django.views import defaults

import bros.settings
from core.models import Center, StaffProfile

NAV = re.compile(r'<nav class="site-nav".*?</nav>', re.S)
LINK = re.compile(r'<a href="([^"]+)"( aria-current="page")?>([^<]+)</a>')

# Pages a user might try by hand; each role may open exactly its navigation's pages among them.
CANDIDATES = [
    "/dispatch/",
    "/dispatch/gangnam/",
    "/dispatch/mapo/",
    "/orders/",
    "/reports/",
    "/ops/",
    "/rider/",
    "/admin/",
]


def nav_links(content: bytes) -> list[tuple[str, str, bool]]:
    """The site navigation's links: (url, label, current), in order."""
    found = NAV.search(content.decode())
    return [(url, label, bool(current)) for url, current, label in LINK.findall(found.group())] if found else []


@pytest.mark.parametrize(
    ("username", "page", "expected"),
    [
        (
            "admin",
            "/dispatch/",
            [
                ("/admin/", "Admin"),
                ("/dispatch/", "All centers"),
                ("/dispatch/gangnam/", "Gangnam"),
                ("/dispatch/mapo/", "Mapo"),
                ("/dispatch/songpa/", "Songpa"),
                ("/orders/", "Orders"),
                ("/reports/", "Reports"),
                ("/ops/", "Ops"),
            ],
        ),
        (
            "hq",
            "/dispatch/",
            [
                ("/dispatch/", "All centers"),
                ("/dispatch/gangnam/", "Gangnam"),
                ("/dispatch/mapo/", "Mapo"),
                ("/dispatch/songpa/", "Songpa"),
                ("/orders/", "Orders"),
                ("/reports/", "Reports"),
                ("/ops/", "Ops"),
                ("/admin/", "Admin"),
            ],
        ),
        ("callcenter", "/orders/", [("/orders/", "Orders")]),
        ("dispatch-mapo", "/dispatch/mapo/", [("/dispatch/mapo/", "Mapo board"), ("/reports/", "Reports")]),
        ("rider-gangnam-01", "/rider/", [("/rider/", "My deliveries")]),
    ],
)
def test_navigation_shows_the_pages_of_the_role(client, demo, username, page, expected):
    """Each role's navigation lists its pages in order, the one on screen marked current."""
    client.force_login(demo.user(username))
    links = nav_links(client.get(page).content)
    assert [(url, label) for url, label, _ in links] == expected
    assert [url for url, _, current in links if current] == [page]


@pytest.mark.parametrize("username", ["admin", "hq", "callcenter", "dispatch-mapo", "rider-gangnam-01"])
def test_navigation_lists_exactly_the_pages_the_user_may_open(client, demo, username):
    """Every page in the navigation opens; every other page the user might try is refused."""
    client.force_login(demo.user(username))
    listed = {url for url, _, _ in nav_links(client.get("/no-such-page/").content)}
    assert listed
    for url in CANDIDATES:
        response = client.get(url)
        if url in listed:
            assert response.status_code == 200, url
        elif url == "/admin/":
            assert response.status_code == 302, url  # the admin asks non-staff to log in as staff
        else:
            assert response.status_code == 403, url


def test_navigation_groups_several_boards_in_one_menu_with_the_current_one(client, demo, django_user_model):
    """A dispatcher of two centers gets a "Boards" menu; the board on screen is the current link."""
    user = django_user_model.objects.create_user("dispatch-two", password="x")
    profile = StaffProfile.objects.create(user=user, role=StaffProfile.Role.DISPATCHER)
    profile.centers.set(Center.objects.filter(code__in=["mapo", "songpa"]))
    client.force_login(user)
    response = client.get("/", follow=True)
    assert response.redirect_chain[-1][0] == "/dispatch/mapo/"
    nav = NAV.search(response.content.decode()).group()
    assert '<summary class="current">Boards</summary>' in nav
    assert nav_links(response.content) == [
        ("/dispatch/mapo/", "Mapo", True),
        ("/dispatch/songpa/", "Songpa", False),
        ("/reports/", "Reports", False),
    ]


def test_navigation_marks_the_board_current_on_its_own_page_only(client, demo):
    """On a board, HQ's "All centers" (a prefix of the board's URL) is not the current page."""
    client.force_login(demo.user("hq"))
    links = nav_links(client.get("/dispatch/songpa/").content)
    assert [url for url, _, current in links if current] == ["/dispatch/songpa/"]


def test_dispatcher_without_a_center_is_told_so(client, demo, django_user_model):
    """A dispatcher not yet assigned to any center gets the styled refusal saying why."""
    user = django_user_model.objects.create_user("dispatch-none", password="x")
    StaffProfile.objects.create(user=user, role=StaffProfile.Role.DISPATCHER)
    client.force_login(user)
    response = client.get("/")
    assert response.status_code == 403
    assert b"You are not assigned to a center yet." in response.content


def test_anonymous_pages_show_no_navigation(client, db):
    """The login page has no site navigation and no logout."""
    content = client.get("/accounts/login/").content
    assert not NAV.search(content.decode())
    assert b"Log out" not in content


# -- error pages ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "path", "reason"),
    [
        ("dispatch-gangnam", "/dispatch/mapo/", "You do not dispatch this center."),
        ("callcenter", "/dispatch/", "This page is not for your role."),
        ("hq", "/rider/", "This page is for riders."),
    ],
)
def test_refused_page_is_the_styled_403_inside_the_shell(client, demo, username, path, reason):
    """A refusal is the shell's 403 page: one heading, the reason, the user's navigation, a way home."""
    client.force_login(demo.user(username))
    response = client.get(path)
    content = response.content.decode()
    assert response.status_code == 403
    assert response["Content-Type"].startswith("text/html")
    assert content.count("<h1") == 1
    assert "You cannot open this page" in content
    assert reason in content
    assert nav_links(response.content)  # the user can go on from here
    assert 'href="/"' in content


def test_missing_page_is_the_styled_404_inside_the_shell(client, demo):
    """An unknown address answers the shell's 404 page, with the user's navigation and nothing current."""
    client.force_login(demo.user("dispatch-gangnam"))
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert response.content.decode().count("<h1") == 1
    assert "Page not found" in response.content.decode()
    assert nav_links(response.content) == [
        ("/dispatch/gangnam/", "Gangnam board", False),
        ("/reports/", "Reports", False),
    ]


def test_the_api_keeps_its_json_refusals(client, demo):
    """/api/ answers refusals and missing things in JSON, not with the HTML pages."""
    client.force_login(demo.user("rider-gangnam-01"))
    refused = client.get("/api/v1/streams/deliveries:gangnam/snapshot")
    missing = client.get("/api/v1/deliveries/999999999")
    for response, status in ((refused, 403), (missing, 404)):
        assert response.status_code == status
        assert response["Content-Type"].startswith("application/json")
        assert "detail" in response.json()


def test_server_error_page_renders_without_request_or_database(django_db_blocker):
    """The 500 page needs no request context and no database: it is what shows when those fail."""
    with django_db_blocker.block():
        response = defaults.server_error(RequestFactory().get("/dispatch/"))
    content = response.content.decode()
    assert response.status_code == 500
    assert "Something went wrong on our side" in content
    assert content.count("<h1") == 1
    assert "site-nav" not in content


def test_permission_denied_anywhere_renders_the_styled_page(demo, rf):
    """Django's own handler turns a PermissionDenied into the shell's 403 page with the reason."""
    request = rf.get("/")
    request.user = demo.user("callcenter")
    response = response_for_exception(request, PermissionDenied("Not for you."))
    assert response.status_code == 403
    assert "Not for you." in response.content.decode()


# -- map tiles -----------------------------------------------------------------------------------------------


def settings_with_env(monkeypatch, **environ) -> dict:
    """bros/settings.py evaluated afresh with these environment variables (None: unset)."""
    for name, value in environ.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return runpy.run_path(bros.settings.__file__)


def test_map_tiles_default_to_openstreetmap_with_its_attribution(monkeypatch):
    """With MAP_TILE_URL unset, maps use OpenStreetMap's standard tiles and credit them."""
    values = settings_with_env(monkeypatch, MAP_TILE_URL=None, MAP_TILE_ATTRIBUTION=None)
    assert values["MAP_TILE_URL"] == "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
    assert "OpenStreetMap</a> contributors" in values["MAP_TILE_ATTRIBUTION"]


def test_map_tiles_follow_a_set_url_and_an_empty_one_means_none(monkeypatch):
    """Any tile URL is used as given (no OSM credit unless set); an empty value means no tiles."""
    url = "https://tiles.example.com/{z}/{x}/{y}.png"
    own = settings_with_env(monkeypatch, MAP_TILE_URL=url, MAP_TILE_ATTRIBUTION=None)
    assert (own["MAP_TILE_URL"], own["MAP_TILE_ATTRIBUTION"]) == (url, "")
    none = settings_with_env(monkeypatch, MAP_TILE_URL="", MAP_TILE_ATTRIBUTION=None)
    assert (none["MAP_TILE_URL"], none["MAP_TILE_ATTRIBUTION"]) == ("", "")


def board_map_config(client) -> dict:
    content = client.get("/dispatch/gangnam/").content.decode()
    found = re.search(r'<script id="board-config" type="application/json">(.*?)</script>', content, re.S)
    return json.loads(found.group(1))["map"]


def test_board_page_config_carries_the_tiles_and_their_attribution(client, demo, settings):
    """The board's map gets the configured tile URL and attribution; with none configured, no tiles."""
    client.force_login(demo.user("dispatch-gangnam"))
    assert (board_map_config(client)["tiles"], board_map_config(client)["attribution"]) == ("", "")  # the tests' own
    settings.MAP_TILE_URL, settings.MAP_TILE_ATTRIBUTION = settings.OSM_TILE_URL, settings.OSM_ATTRIBUTION
    config = board_map_config(client)
    assert config["tiles"] == "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
    assert config["attribution"] == settings.OSM_ATTRIBUTION


def test_every_page_links_the_favicon_which_is_served(client, demo):
    """The shell links an SVG favicon, and the static files have it."""
    from django.contrib.staticfiles import finders

    content = client.get("/accounts/login/").content.decode()
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in content
    assert finders.find("favicon.svg")


def test_expired_form_is_the_styled_csrf_page(demo):
    """A form sent without its CSRF token gets the shell's "form expired" page, not Django's."""
    from django.test import Client

    response = Client(enforce_csrf_checks=True).post("/accounts/login/", {"username": "hq", "password": "demo"})
    assert response.status_code == 403
    assert "This form has expired" in response.content.decode()


def test_admin_view_site_link_leads_a_superuser_to_the_dashboard(client, demo):
    """A superuser lands on the admin; its "View site" opens the overview instead of looping back."""
    client.force_login(demo.user("admin"))
    content = client.get("/admin/").content.decode()
    assert '<a href="/dispatch/">View site</a>' in content
    assert client.get("/dispatch/").status_code == 200
