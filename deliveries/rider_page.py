"""The rider's phone page `/rider/`: what a rider works on today, and the files that make it installable.

It lives in `deliveries`, not `riders`, because it shows deliveries and orders and `riders` sits
below `deliveries` (architecture.md §1). Duty (a `riders` service) and GPS (`riders.positions`)
are reached from the page through the API and the socket, not imported here.
"""

from __future__ import annotations

import json

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.shortcuts import render
from django.templatetags.static import static
from django.urls import reverse
from django.views.decorators.cache import never_cache

from core import access
from deliveries.models import Delivery
from deliveries.selectors import active_shops, deliveries_with_related, rider_with_center, start_of_today
from realtime.events import delivery_data, order_data, rider_data
from realtime.outbox import stream_position
from realtime.streams import stream_for_user
from riders.models import Rider
from riders.selectors import distance_travelled

RIDER_CACHE = "bros-rider-v1"  # the service worker's cache; the page empties it when the rider logs out
UNDO_MS = 5000  # a status tap waits this long for "Undo" before it is sent

# What the page needs offline: its service worker stores these at install (and any static file the page loads).
SHELL_STATIC = (
    "css/bros.css",
    "css/rider.css",
    "realtime/client.js",
    "rider/rider.js",
    "rider/queue.js",
    "rider/gps.js",
    "rider/icon.svg",
)


def rider_today(rider: Rider) -> dict:
    """The rider's page state: active deliveries with their orders, today's finished ones, counts.

    The `user:<id>` stream's position is read *before* the state, so every event after it is
    either already reflected (the page ignores it by `version`) or still to come. Four queries
    (five when the stream was never written to).
    """
    stream = stream_for_user(rider.user_id)
    epoch, head = stream_position(stream)
    since = start_of_today()
    deliveries = list(
        deliveries_with_related()
        .select_related("order__center", "order__shop")
        .filter(rider=rider)
        .filter(Q(status__in=Delivery.ACTIVE_STATUSES) | Q(delivered_at__gte=since) | Q(cancelled_at__gte=since))
        .order_by("order__promised_at", "pk")
    )
    active, history = [], []
    for delivery in deliveries:
        if delivery.status in Delivery.ACTIVE_STATUSES:
            delivery.order.delivery = delivery
            active.append(
                {
                    "delivery": delivery_data(delivery).model_dump(mode="json"),
                    "order": order_data(delivery.order).model_dump(mode="json"),
                }
            )
        else:
            history.append(delivery_data(delivery).model_dump(mode="json"))
    history.sort(key=lambda d: d["delivered_at"] or d["cancelled_at"], reverse=True)
    shops = active_shops(center_code=rider.center.code).values("id", "name", "address", "phone", "lat", "lng")
    return {
        "rider": rider_data(rider).model_dump(mode="json"),
        "shops": {str(shop["id"]): shop for shop in shops},
        "stream": {"name": stream, "epoch": epoch, "head": head},
        "active": active,
        "history": history,
        "counts": {
            "delivered": sum(d["status"] == Delivery.Status.DELIVERED for d in history),
            "cancelled": sum(d["status"] == Delivery.Status.CANCELLED for d in history),
            "distance_m": round(distance_travelled(rider_id=rider.pk, since=since)),
        },
    }


def page_rider(request) -> Rider:
    """The rider using the page; anyone else (staff, a user without a rider) is refused."""
    user_access = access.access_for(request.user)
    if user_access.role != access.Role.RIDER or user_access.rider_id is None:
        raise PermissionDenied("This page is for riders.")
    return rider_with_center(user_access.rider_id)


@never_cache  # the service worker keeps its own copy for offline use; the browser cache must not
@login_required
def rider_page(request):
    rider = page_rider(request)
    config = {
        "rider_id": rider.pk,
        "user_id": rider.user_id,
        "api": "/api/v1",
        "undo_ms": UNDO_MS,
        "service_worker": reverse("rider-sw"),
        "scope": reverse("rider"),
        "cache": RIDER_CACHE,
    }
    return render(request, "deliveries/rider.html", {"rider": rider, "today": rider_today(rider), "config": config})


def service_worker(request):
    """The service worker, served under /rider/ so that its scope is the rider page."""
    response = render(
        request,
        "deliveries/rider_sw.js",
        {
            "cache_name": RIDER_CACHE,
            "shell": json.dumps([reverse("rider"), *(static(path) for path in SHELL_STATIC)]),
            "static_prefix": settings.STATIC_URL if settings.STATIC_URL.startswith("/") else f"/{settings.STATIC_URL}",
        },
        content_type="text/javascript",
    )
    response["Cache-Control"] = "no-cache"
    return response


def manifest(request):
    """The web app manifest: the rider page can be installed on the home screen."""
    context = {"icon": static("rider/icon.svg")}
    return render(request, "deliveries/rider.webmanifest", context, content_type="application/manifest+json")
