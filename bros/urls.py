"""Top-level URLs: accounts, pages per role, the HTTP API and admin."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from bros.api import api
from core.health import healthz
from core.metrics import metrics_view
from deliveries import views as delivery_views
from realtime import testpage as realtime_testpage
from realtime import views as realtime_views

# The admin's "View site": the dashboard, not "/", which sends superusers straight back to the admin.
admin.site.site_url = "/dispatch/"

urlpatterns = [
    path("", delivery_views.home, name="home"),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/v1/", api.urls),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
    path("healthz", healthz, name="healthz"),
    path("ops/", realtime_views.ops_page, name="ops"),
    path("ops/panel/", realtime_views.ops_panel, name="ops-panel"),
    path("dev/realtime-test/", realtime_testpage.view, name="realtime-test-page"),
    path("", include("deliveries.urls")),
]
