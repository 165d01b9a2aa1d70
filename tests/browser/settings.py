"""Settings of the live ASGI server the browser tests drive: the project's, plus the client test page.

The server runs with DEBUG off like production, so static files are served by WhiteNoise straight
from the source folders (no `collectstatic` in tests).
"""

from bros.settings import *  # noqa: F403

ROOT_URLCONF = "realtime.tests.browser_urls"
REALTIME_TEST_PAGE = True
MAP_TILE_URL = ""  # no tiles: the tests never reach the internet
MAP_TILE_ATTRIBUTION = ""

STORAGES = {
    **STORAGES,  # noqa: F405
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True

MIDDLEWARE = [*MIDDLEWARE, "tests.browser.middleware.forget_content_types"]  # noqa: F405
OPS_REFRESH_SECONDS = 1  # the ops page polls each second, so a test sees a change well within its wait
