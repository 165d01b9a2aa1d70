"""Event schemas and their builders: the only way an event's payload is made.

Each event name maps to one pydantic model (unknown fields are an error). Services build events
with the builders below and hand them to `outbox.emit` inside their transaction; API responses use
the same entity schemas, so a client sees one shape of a delivery everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from realtime.streams import stream_for_center, stream_for_user

# Every timestamp leaves in UTC, so an entity has one shape whether built in memory or read back.
UtcDatetime = Annotated[datetime, AfterValidator(lambda value: value.astimezone(UTC))]


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    return text


# Text a client may send: PostgreSQL cannot store NUL in JSON, so refuse it as bad input.
ClientText = Annotated[str, AfterValidator(_no_nul)]


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OrderItem(Schema):
    name: str = Field(min_length=1, max_length=100)
    qty: int = Field(ge=1, le=99)


class DeliveryData(Schema):
    id: int
    version: int
    status: str
    order: int
    center: str
    shop: int
    shop_name: str
    rider: int | None
    rider_name: str | None
    address: str
    lat: float | None
    lng: float | None
    promised_at: UtcDatetime
    created_at: UtcDatetime
    assigned_at: UtcDatetime | None
    picked_up_at: UtcDatetime | None
    delivered_at: UtcDatetime | None
    cancelled_at: UtcDatetime | None


class OrderData(Schema):
    id: int
    version: int
    status: str
    center: str
    shop: int
    shop_name: str
    delivery: int
    customer_name: str
    customer_phone: str
    address: str
    lat: float | None
    lng: float | None
    items: list[OrderItem]
    note: str
    promised_at: UtcDatetime
    created_at: UtcDatetime
    cancel_reason: str


class RiderData(Schema):
    id: int
    version: int
    status: str
    center: str
    name: str
    vehicle: str
    on_duty: bool
    load: int


class AssignmentData(Schema):
    delivery: DeliveryData
    order: OrderData


class AssignmentRevokedData(Schema):
    delivery: DeliveryData
    reason: str  # "reassigned", "unassigned" or "cancelled"
    was_picked_up: bool
    cancel_reason: str = ""  # why the order was cancelled, as the canceller typed it (reason "cancelled")


class NoticeData(Schema):
    text: ClientText = Field(min_length=1, max_length=2000)
    level: Literal["info", "warning", "urgent"] = "info"


class ChatMessageData(Schema):
    id: str
    text: ClientText = Field(min_length=1, max_length=2000)
    client_msg_id: ClientText | None = Field(None, max_length=100)
    author_id: int | None
    author_name: str
    # hq, dispatcher, callcenter, rider; None for a token or a user without a role.
    author_role: str | None = None
    sent_at: UtcDatetime


class ChatUnreadData(Schema):
    """On `user:<id>`: the user's unread count of a chat stream changed (a direct message came, or they read)."""

    stream: str
    unread: int = Field(ge=0)
    # The user's last read seq of `stream` after the change.
    last_read: int = Field(ge=0)


EVENT_SCHEMAS: dict[str, type[Schema]] = {
    "delivery.created": DeliveryData,
    "delivery.assigned": DeliveryData,
    "delivery.unassigned": DeliveryData,
    "delivery.picked_up": DeliveryData,
    "delivery.delivered": DeliveryData,
    "delivery.cancelled": DeliveryData,
    "delivery.updated": DeliveryData,
    "order.created": OrderData,
    "order.updated": OrderData,
    "order.cancelled": OrderData,
    "order.notice": NoticeData,
    "rider.status": RiderData,
    "assignment.new": AssignmentData,
    "assignment.revoked": AssignmentRevokedData,
    "notice": NoticeData,
    "chat.message": ChatMessageData,
    "chat.unread": ChatUnreadData,
}


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """An event built by a service, not yet given its seq."""

    stream: str
    name: str
    data: dict[str, Any]


def build(stream: str, name: str, payload: Schema | dict) -> PendingEvent:
    """Validate `payload` against the schema of `name` and return the event to emit."""
    schema = EVENT_SCHEMAS[name]
    model = payload if isinstance(payload, schema) else schema.model_validate(payload)
    return PendingEvent(stream=stream, name=name, data=model.model_dump(mode="json"))


def delivery_data(delivery) -> DeliveryData:
    order = delivery.order
    return DeliveryData(
        id=delivery.pk,
        version=delivery.version,
        status=delivery.status,
        order=order.pk,
        center=delivery.center.code,
        shop=delivery.shop_id,
        shop_name=delivery.shop.name,
        rider=delivery.rider_id,
        rider_name=delivery.rider.name if delivery.rider_id else None,
        address=order.address,
        lat=order.lat,
        lng=order.lng,
        promised_at=order.promised_at,
        created_at=delivery.created_at,
        assigned_at=delivery.assigned_at,
        picked_up_at=delivery.picked_up_at,
        delivered_at=delivery.delivered_at,
        cancelled_at=delivery.cancelled_at,
    )


def order_data(order) -> OrderData:
    return OrderData(
        id=order.pk,
        version=order.version,
        status=order.status,
        center=order.center.code,
        shop=order.shop_id,
        shop_name=order.shop.name,
        delivery=order.delivery.pk,
        customer_name=order.customer_name,
        customer_phone=order.customer_phone,
        address=order.address,
        lat=order.lat,
        lng=order.lng,
        items=order.items,
        note=order.note,
        promised_at=order.promised_at,
        created_at=order.created_at,
        cancel_reason=order.cancel_reason,
    )


def rider_data(rider) -> RiderData:
    return RiderData(
        id=rider.pk,
        version=rider.version,
        status=rider.status,
        center=rider.center.code,
        name=rider.name,
        vehicle=rider.vehicle,
        on_duty=rider.on_duty,
        load=rider.load,
    )


def delivery_event(name: str, delivery) -> PendingEvent:
    return build(
        stream_for_center("deliveries", delivery.center.code),
        name,
        delivery_data(delivery),
    )


def order_event(name: str, order) -> PendingEvent:
    return build(stream_for_center("orders", order.center.code), name, order_data(order))


def rider_status_event(rider) -> PendingEvent:
    return build(
        stream_for_center("riders", rider.center.code),
        "rider.status",
        rider_data(rider),
    )


def assignment_new_event(delivery) -> PendingEvent:
    payload = AssignmentData(delivery=delivery_data(delivery), order=order_data(delivery.order))
    return build(stream_for_user(delivery.rider.user_id), "assignment.new", payload)


def assignment_revoked_event(
    delivery, *, rider, reason: str, was_picked_up: bool = False, cancel_reason: str = ""
) -> PendingEvent:
    payload = AssignmentRevokedData(
        delivery=delivery_data(delivery), reason=reason, was_picked_up=was_picked_up, cancel_reason=cancel_reason
    )
    return build(stream_for_user(rider.user_id), "assignment.revoked", payload)


def rider_moved_event(rider, *, from_center_code: str) -> PendingEvent:
    """`rider.status` on the stream of the center a rider left: its `center` names the new one."""
    return build(stream_for_center("riders", from_center_code), "rider.status", rider_data(rider))
