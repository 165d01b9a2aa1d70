"""The call center's pages: order intake and today's orders (`/orders/`), and one order (`/orders/<id>/`).

Thin adapters: they check the role and the centers, parse the form, call one service or selector
and render. The rules are `services.take_phone_order`'s and `OrderInput`'s.
"""

from __future__ import annotations

import hashlib
import json
import uuid

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_http_methods

from core import access
from core.api_auth import IdempotencyKeyError, run_once
from deliveries import selectors, services
from deliveries.forms import IntakeForm
from deliveries.models import Delivery, Order
from riders.positions import rider_position
from riders.suggestions import haversine_km

INTAKE_ROLES = (access.Role.HQ, access.Role.CALLCENTER)
ORDER_PAGE_ROLES = (access.Role.HQ, access.Role.CALLCENTER, access.Role.DISPATCHER)


def _intake_centers(request) -> list[str]:
    """The centers whose orders the user takes: call-center staff and HQ only."""
    user_access = access.access_for(request.user)
    if user_access.role not in INTAKE_ROLES:
        raise PermissionDenied("Order intake is for the call center and HQ.")
    return user_access.center_codes()


def _new_key() -> str:
    return uuid.uuid4().hex


def _page_context(centers: list[str], form: IntakeForm, taken: Order | None = None) -> dict:
    centers_shown = list(selectors.centers_by_code(centers))
    return {
        "form": form,
        "taken": taken,
        "shops": list(selectors.active_shops_of(centers)),
        "centers": centers_shown,
        "orders": selectors.call_center_orders(center_codes=centers),
        "search": "",
        "now": timezone.now(),
        "config": {
            "streams": [f"{ns}:{code}" for code in centers for ns in ("orders", "deliveries")],
            "map": _map_config(centers_shown[0] if centers_shown else None),
            "centers": {c.code: {"lat": c.lat, "lng": c.lng} for c in centers_shown},
            "service_radius_km": settings.CENTER_SERVICE_RADIUS_KM,
        },
    }


def _map_config(center) -> dict:
    return {
        "lat": center.lat if center else 37.5665,
        "lng": center.lng if center else 126.978,
        "tiles": settings.MAP_TILE_URL,
        "attribution": settings.MAP_TILE_ATTRIBUTION,
    }


@login_required
@require_http_methods(["GET", "POST"])
def orders_page(request):
    """The intake form beside today's orders. A POST takes the order (htmx swaps only the form)."""
    centers = _intake_centers(request)
    if request.method == "GET":
        return render(request, "deliveries/orders.html", _page_context(centers, IntakeForm.blank(key=_new_key())))
    form = IntakeForm.from_post(request.POST)
    taken, status = _take(request, form)
    if taken is not None:
        form = IntakeForm.blank(key=_new_key(), shop=form.shop)
    if request.htmx:
        response = render(
            request, "deliveries/orders.html#intake", {**_form_context(centers), "form": form, "taken": taken}
        )
        if taken is not None:
            response["HX-Trigger"] = "order-taken"
        return response
    return render(request, "deliveries/orders.html", _page_context(centers, form, taken), status=status)


def _form_context(centers: list[str]) -> dict:
    return {"shops": list(selectors.active_shops_of(centers))}


def _form_fingerprint(request) -> str:
    """The form as sent (its fields, not the CSRF token): a resend is the same request whatever its encoding."""
    fields = sorted((name, request.POST.getlist(name)) for name in request.POST if name != "csrfmiddlewaretoken")
    return hashlib.sha256(json.dumps([request.path, fields]).encode()).hexdigest()


def _take(request, form: IntakeForm) -> tuple[Order | None, int]:
    """Take the order once per form key (a double submit gets the first result); refusals go to `form.errors`."""
    if not form.key:
        form.key = _new_key()

    def run():
        order = services.take_phone_order(
            actor=request.user,
            shop_id=form.shop_id(),
            fields=form.order_fields(),
            confirm_outside_area=form.confirm_outside_area,
            confirm_duplicate=form.confirm_duplicate,
        )
        return 201, {"order": order.pk}

    try:
        _, body = run_once(
            owner=f"user:{request.user.pk}", key=form.key, fingerprint=_form_fingerprint(request), run=run
        )
    except ValidationError as exc:
        form.errors = form.refine(exc.message_dict)
        return None, 422
    except IdempotencyKeyError:
        form.errors = {
            "__all__": ["This form was already sent with other details: check today's orders before taking it again."]
        }
        form.key = _new_key()
        return None, 422
    return selectors.order_for_page(body["order"]), 201


@login_required
@require_GET
def order_list(request):
    """Today's orders of the agent's centers, searched (htmx: the list partial)."""
    centers = _intake_centers(request)
    search = request.GET.get("q", "").replace("\x00", "").strip()[:100]
    context = {
        "orders": selectors.call_center_orders(center_codes=centers, search=search),
        "search": search,
        "now": timezone.now(),
    }
    response = render(request, "deliveries/orders.html#list", context)
    patch_vary_headers(response, ["HX-Request"])
    return response


@login_required
@require_GET
def customer_lookup(request):
    """A known phone's earlier names and places, for the agent to pick (htmx: the suggestions partial)."""
    centers = _intake_centers(request)
    history = selectors.customer_history(phone=request.GET.get("customer_phone", "")[:40], center_codes=centers)
    return render(request, "deliveries/orders.html#customers", {"customers": history})


# -- one order -----------------------------------------------------------------------------------


def _visible_order(request, order_id: int) -> Order:
    """The order if the user may open it (call center, HQ, dispatchers of its center); else 404 as if missing."""
    if access.access_for(request.user).role not in ORDER_PAGE_ROLES:
        raise Http404("No such order.")
    order = selectors.order_for_page(order_id)
    if order is None or not access.can_view_center(request.user, order.center.code):
        raise Http404("No such order.")
    return order


def _order_context(request, order: Order) -> dict:
    delivery = order.delivery
    timeline = list(delivery.timeline.all())
    cancelled = next((e for e in reversed(timeline) if e.action == "cancelled"), None)
    return {
        "order": order,
        "delivery": delivery,
        "timeline": timeline,
        "cancelled": cancelled,
        "may_cancel": delivery.is_open and access.can_take_orders(request.user, order.center.code),
        "speed_kmh": settings.RIDER_TYPICAL_SPEED_KMH,
    }


@login_required
@require_GET
def order_page(request, order_id: int):
    """One order, live: status, cancellation banner, rider, timeline, and the rider on a map once picked up."""
    order = _visible_order(request, order_id)
    context = _order_context(request, order)
    context["config"] = {
        "order": order.pk,
        "delivery": order.delivery.pk,
        "version": order.version,
        "streams": [f"orders:{order.center.code}", f"deliveries:{order.center.code}"],
        "live_url": reverse("order-live", args=[order.pk]),
        "rider_url": reverse("order-rider", args=[order.pk]),
        "cancel_url": f"/api/v1/orders/{order.pk}/cancel",
        "map": _map_config(order.center),
        "drop": [order.lat, order.lng] if order.lat is not None else None,
    }
    return render(request, "deliveries/order.html", context)


@login_required
@require_GET
def order_live(request, order_id: int):
    """The live part of the order page (status, banner, rider, timeline), re-read on each of its events."""
    order = _visible_order(request, order_id)
    response = render(request, "deliveries/order.html#live", _order_context(request, order))
    patch_vary_headers(response, ["HX-Request"])
    return response


@login_required
@require_GET
def order_rider(request, order_id: int):
    """Where the rider of a picked-up order is, and the straight-line ETA to the drop-off (JSON)."""
    order = _visible_order(request, order_id)
    delivery = order.delivery
    if delivery.status != Delivery.Status.PICKED_UP or delivery.rider is None:
        return JsonResponse({"status": delivery.status, "position": None, "eta": None})
    position = rider_position(delivery.rider, center_code=order.center.code)
    eta = None
    if position is not None and order.lat is not None:
        km = haversine_km(position["lat"], position["lng"], order.lat, order.lng)
        eta = {"km": round(km, 2), "minutes": round(km / settings.RIDER_TYPICAL_SPEED_KMH * 60)}
    return JsonResponse({"status": delivery.status, "rider": delivery.rider.name, "position": position, "eta": eta})
