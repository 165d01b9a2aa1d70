"""The project's URLs plus the real-time client test page, for the browser tests' live server."""

from django.urls import path

from bros.urls import urlpatterns as project_urlpatterns
from realtime import testpage

urlpatterns = [
    path("dev/realtime-test/", testpage.view, name="realtime-test-page"),
    *project_urlpatterns,
]


def server_error(request):
    """Fail on purpose: the browser tests check the 500 page the server renders."""
    raise RuntimeError("A failure on purpose, for the 500 page's browser test.")


urlpatterns.insert(0, path("dev/server-error/", server_error))
