"""HTTP API for accounts, centers, shops, orders and deliveries (protocol.md §4): thin adapters.

Each endpoint authorizes, calls one selector or service, and returns the same entity shapes
the events carry. An entity the caller may not see answers 404, as if it did not exist.
"""

import json
from datetime import datetime

from django.http import Http404
from ninja import Field, Query, Router, Schema
from ninja.errors import ValidationError

from core import access
from core.access import token_allows
from core.api_auth import caller_of, idempotent
from core.api_errors import ANY, WITH_BODY, errors
from core.models import Center
from deliveries import rider_page, selectors, services
from deliveries.models import Delivery
from deliveries.schemas import OrderInput
from realtime.events import DeliveryData, OrderData, RiderData, delivery_data, order_data
from realtime.ratelimit import limit_commands
from realtime.streams import UnknownStream, parse_stream

router = Router(tags=["deliveries"])

# A command on an existing entity: refused by role (403), unknown or not visible (404), by state (409).
COMMAND_ERRORS = errors(*WITH_BODY, 403, 404, 409, 429)


class MeOut(Schema):
    id: int
    username: str
    role: str | None
    centers: list[str]


class CenterOut(Schema):
    code: str
    name: str
    lat: float
    lng: float


class ShopOut(Schema):
    id: int
    center: str = Field(..., alias="center.code")
    name: str
    address: str
    phone: str
    lat: float
    lng: float
    prep_minutes: int


class OrderOut(OrderData):
    delivery: DeliveryData


class TimelineOut(Schema):
    at: datetime
    by: str
    source: str
    action: str
    from_status: str
    to_status: str
    detail: dict


class DeliveryDetailOut(DeliveryData):
    order_detail: OrderData
    timeline: list[TimelineOut]


class OrderIn(OrderInput):
    """The order input (every rule in `OrderInput`) and the shop taking it."""

    shop: int = Field(strict=True)


# Strict: `true` is no rider id and "3" no version (bool and text were coerced to int).
class CancelIn(Schema):
    reason: str = Field(max_length=200)
    version: int | None = Field(None, strict=True)


class AssignIn(Schema):
    rider: int = Field(strict=True)
    version: int | None = Field(None, strict=True)


class VersionIn(Schema):
    version: int | None = Field(None, strict=True)


def _optional_version(request, payload: VersionIn | None) -> int | None:
    """The version of a command whose body is optional: empty, `null` or `{"version": n}`.

    ninja reads any other JSON (`123`, `[]`) as "no body"; refuse it like any other bad body.
    """
    if request.body.strip():
        try:
            body = json.loads(request.body)
        except ValueError:
            body = None  # ninja has refused malformed JSON before this runs
        if body is not None and not isinstance(body, dict):
            raise ValidationError(
                [{"loc": ["body"], "msg": "The body must be a JSON object, or empty.", "type": "dict_type"}]
            )
    return payload.version if payload else None


MAX_OFFSET = 1_000_000  # far beyond a day's deliveries; keeps the slice inside PostgreSQL's bigint


class DeliveryFilter(Schema):
    # Examples (here and in other routes) are from the demo data: the schemathesis run starts from
    # them, so it reaches real answers, not only refusals.
    center: str = Field(..., json_schema_extra={"example": "gangnam"})
    status: Delivery.Status | None = None
    limit: int = Field(200, ge=1, le=2000)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)


def _user_or_404(request):
    caller = caller_of(request)
    if caller.user is None:
        raise Http404("This endpoint needs a user session.")
    return caller.user


def _may_view_center(request, center_code: str, *, stream_namespace: str) -> bool:
    """Users need the center's view right; tokens need the matching stream in their scope."""
    caller = caller_of(request)
    try:
        stream = parse_stream(f"{stream_namespace}:{center_code}")
    except UnknownStream:
        return False
    if caller.token is not None:
        return token_allows(caller.token.streams, str(stream))
    return access.can_view_center(caller.user, center_code)


def _require_center_view(request, center_code: str, *, stream_namespace: str) -> None:
    """A center named by the caller: 404 unless they may view it and it exists."""
    allowed = _may_view_center(request, center_code, stream_namespace=stream_namespace)
    if not allowed or not Center.objects.filter(code=center_code).exists():
        raise Http404("No such center.")


def _require_delivery_visible(
    request, seen: tuple[int | None, str] | None, *, stream_namespace="deliveries", missing="No such delivery."
) -> None:
    """404 with `missing` unless the caller may see a delivery, given as `(rider_id, center code)`.

    Its rider may, and whoever may view its center. A foreign delivery and a missing one (`None`)
    get the same answer, so ids cannot be probed. The center came from the delivery's own row, so
    it exists.
    """
    if seen is None:
        raise Http404(missing)
    rider_id, center_code = seen
    caller = caller_of(request)
    if rider_id is not None and caller.user is not None and access.access_for(caller.user).rider_id == rider_id:
        return
    if not _may_view_center(request, center_code, stream_namespace=stream_namespace):
        raise Http404(missing)


def _visible_delivery_center(
    request, delivery: Delivery | None, *, stream_namespace="deliveries", missing="No such delivery."
) -> Delivery:
    """Return the delivery if the caller may see it (see `_require_delivery_visible`), else 404."""
    seen = (delivery.rider_id, delivery.center.code) if delivery is not None else None
    _require_delivery_visible(request, seen, stream_namespace=stream_namespace, missing=missing)
    return delivery


@router.get("/me", response={200: MeOut, **errors(*ANY, 404)})
def me(request):
    user = _user_or_404(request)
    user_access = access.access_for(user)
    return {
        "id": user.pk,
        "username": user.get_username(),
        "role": user_access.role,
        "centers": user_access.center_codes(),
    }


@router.get("/centers", response={200: list[CenterOut], **errors(*ANY)})
def centers(request):
    caller = caller_of(request)
    if caller.user is None:
        return []
    return selectors.centers_by_code(access.access_for(caller.user).center_codes())


@router.get("/shops", response={200: list[ShopOut], **errors(*ANY, 404, 422)})
def shops(request, center: str = Query(..., example="gangnam")):
    _require_center_view(request, center, stream_namespace="orders")
    return selectors.active_shops(center_code=center).select_related("center")


@router.get("/deliveries", response={200: list[DeliveryData], **errors(*ANY, 404, 422)})
def deliveries(request, filters: Query[DeliveryFilter]):
    _require_center_view(request, filters.center, stream_namespace="deliveries")
    rows = selectors.todays_deliveries(center_code=filters.center, status=filters.status)
    return [delivery_data(d) for d in rows[filters.offset : filters.offset + filters.limit]]


@router.get("/deliveries/{int:delivery_id}", response={200: DeliveryDetailOut, **errors(*ANY, 404)})
def delivery_detail(request, delivery_id: int):
    delivery = _visible_delivery_center(request, selectors.delivery_with_timeline(delivery_id))
    timeline = [
        TimelineOut(
            at=e.at,
            by=e.actor_label,
            source=e.source,
            action=e.action,
            from_status=e.from_status,
            to_status=e.to_status,
            detail=e.detail,
        )
        for e in delivery.timeline.all()
    ]
    delivery.order.delivery = delivery
    return DeliveryDetailOut(
        **delivery_data(delivery).model_dump(), order_detail=order_data(delivery.order), timeline=timeline
    )


def order_out(order) -> dict:
    return OrderOut(
        **order_data(order).model_dump(exclude={"delivery"}), delivery=delivery_data(order.delivery)
    ).model_dump(mode="json")


@router.get("/orders/{int:order_id}", response={200: OrderOut, **errors(*ANY, 404)})
def order_detail(request, order_id: int):
    order = selectors.order_with_delivery(order_id)
    _visible_delivery_center(
        request, order.delivery if order else None, stream_namespace="orders", missing="No such order."
    )
    return order_out(order)


@router.post("/orders", response={201: OrderOut, **errors(*WITH_BODY, 403, 429)})
@limit_commands
@idempotent
def create_order(request, payload: OrderIn):
    caller = caller_of(request)
    order = services.create_order(
        actor=caller.actor,
        shop_id=payload.shop,
        **payload.model_dump(exclude={"shop"}),
        source="api" if caller.token else None,
        via=caller.via,
    )
    return 201, order_out(order)


@router.post("/orders/{int:order_id}/cancel", response={200: OrderOut, **COMMAND_ERRORS})
@limit_commands
@idempotent
def cancel_order(request, order_id: int, payload: CancelIn):
    caller = caller_of(request)
    order = selectors.order_with_delivery(order_id)
    # Tokens too: one outside its centers is told "No such order.", not that the order exists.
    _visible_delivery_center(
        request, order.delivery if order else None, stream_namespace="orders", missing="No such order."
    )
    order = services.cancel_order(
        actor=caller.actor,
        order_id=order_id,
        reason=payload.reason,
        expected_version=payload.version,
        source="api" if caller.token else None,
        via=caller.via,
    )
    return 200, order_out(order)


def _delivery_command(request, delivery_id: int, run) -> tuple[int, dict]:
    """Run a delivery command for the caller (the service authorizes it) and return the delivery.

    A caller who may not see the delivery is answered 404, as if it did not exist.
    """
    caller = caller_of(request)
    # Tokens too: one outside its centers is told "No such delivery.", not that it exists.
    _require_delivery_visible(request, selectors.delivery_rider_and_center(delivery_id))
    updated = run(actor=caller.actor, source="api" if caller.token else None, via=caller.via)
    return 200, delivery_data(updated).model_dump(mode="json")


@router.post("/deliveries/{int:delivery_id}/assign", response={200: DeliveryData, **COMMAND_ERRORS})
@limit_commands
@idempotent
def assign_delivery(request, delivery_id: int, payload: AssignIn):
    return _delivery_command(
        request,
        delivery_id,
        lambda **caller: services.assign_delivery(
            delivery_id=delivery_id, rider_id=payload.rider, expected_version=payload.version, **caller
        ),
    )


@router.post("/deliveries/{int:delivery_id}/unassign", response={200: DeliveryData, **COMMAND_ERRORS})
@limit_commands
@idempotent
def unassign_delivery(request, delivery_id: int, payload: VersionIn | None = None):
    version = _optional_version(request, payload)
    return _delivery_command(
        request,
        delivery_id,
        lambda **caller: services.unassign_delivery(delivery_id=delivery_id, expected_version=version, **caller),
    )


@router.post("/deliveries/{int:delivery_id}/pickup", response={200: DeliveryData, **COMMAND_ERRORS})
@limit_commands
@idempotent
def pick_up_delivery(request, delivery_id: int, payload: VersionIn | None = None):
    version = _optional_version(request, payload)
    return _delivery_command(
        request,
        delivery_id,
        lambda **caller: services.pick_up_delivery(delivery_id=delivery_id, expected_version=version, **caller),
    )


@router.post("/deliveries/{int:delivery_id}/deliver", response={200: DeliveryData, **COMMAND_ERRORS})
@limit_commands
@idempotent
def deliver_delivery(request, delivery_id: int, payload: VersionIn | None = None):
    version = _optional_version(request, payload)
    return _delivery_command(
        request,
        delivery_id,
        lambda **caller: services.deliver_delivery(delivery_id=delivery_id, expected_version=version, **caller),
    )


class RiderStreamOut(Schema):
    name: str
    epoch: str
    head: int


class AssignmentOut(Schema):
    delivery: DeliveryData
    order: OrderData


class RiderCountsOut(Schema):
    delivered: int
    cancelled: int
    distance_m: int


class RiderShopOut(Schema):
    id: int
    name: str
    address: str
    phone: str
    lat: float
    lng: float


class RiderTodayOut(Schema):
    rider: RiderData
    shops: dict[str, RiderShopOut]
    stream: RiderStreamOut
    active: list[AssignmentOut]
    history: list[DeliveryData]
    counts: RiderCountsOut


@router.get("/rider/today", response={200: RiderTodayOut, **errors(*ANY, 404)})
def rider_today(request):
    """The calling rider's day, as the rider page shows it; the page reloads it after a reset."""
    caller_access = access.access_for(caller_of(request).user)  # a token has no user: NO_ACCESS
    if caller_access.role != access.Role.RIDER or caller_access.rider_id is None:
        raise Http404("This endpoint is for riders.")
    return rider_page.rider_today(selectors.rider_with_center(caller_access.rider_id))
