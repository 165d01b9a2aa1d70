"""The project's URLs plus the real-time client test page, for the browser tests' live server."""

from django.urls import path

from bros.urls import urlpatterns as project_urlpatterns
from realtime import testpage

urlpatterns = [
    path("dev/realtime-test/", testpage.view, name="realtime-test-page"),
    *project_urlpatterns,
]
