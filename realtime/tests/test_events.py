"""Specification of the event schemas and builders (realtime/events.py)."""

from __future__ import annotations

import json

import pydantic
import pytest

from deliveries.models import Delivery
from deliveries.tests.test_services import assigned_delivery, current_delivery, current_rider
from realtime.events import (
    EVENT_SCHEMAS,
    DeliveryData,
    NoticeData,
    OrderItem,
    PendingEvent,
    assignment_new_event,
    assignment_revoked_event,
    build,
    delivery_event,
    order_event,
    rider_status_event,
)

EVENT_NAMES = sorted(EVENT_SCHEMAS)


@pytest.fixture
def delivery(demo) -> Delivery:
    """An assigned gangnam delivery, read back with everything the builders need."""
    return current_delivery(assigned_delivery(demo).pk)


@pytest.fixture
def payloads(delivery) -> dict[str, dict]:
    """A valid payload for every event name, made by the builders from real entities."""
    rider = current_rider(delivery.rider_id)
    by_schema = {
        DeliveryData: delivery_event("delivery.updated", delivery).data,
        EVENT_SCHEMAS["order.updated"]: order_event("order.updated", delivery.order).data,
        EVENT_SCHEMAS["rider.status"]: rider_status_event(rider).data,
        EVENT_SCHEMAS["assignment.new"]: assignment_new_event(delivery).data,
        EVENT_SCHEMAS["assignment.revoked"]: assignment_revoked_event(delivery, rider=rider, reason="unassigned").data,
        NoticeData: {"text": "Rain on Teheran-ro, expect delays", "level": "warning"},
        EVENT_SCHEMAS["chat.message"]: {
            "id": "4b0e",
            "text": "Rain on Teheran-ro",
            "client_msg_id": "c1",
            "author_id": 1,
            "author_name": "Dispatch Gangnam",
            "sent_at": "2026-11-21T18:02:03.512Z",
        },
        EVENT_SCHEMAS["chat.unread"]: {"stream": "dm:4-9", "unread": 2, "last_read": 7},
    }
    return {name: by_schema[schema] for name, schema in EVENT_SCHEMAS.items()}


def required_fields(name: str) -> list[str]:
    return [field for field, info in EVENT_SCHEMAS[name].model_fields.items() if info.is_required()]


def test_delivery_event_builds_valid_payload_on_center_stream(delivery):
    """delivery_event() puts a valid delivery payload on deliveries:<center>."""
    event = delivery_event("delivery.assigned", delivery)

    assert isinstance(event, PendingEvent)
    assert (event.stream, event.name) == ("deliveries:gangnam", "delivery.assigned")
    data = EVENT_SCHEMAS["delivery.assigned"].model_validate(event.data)
    assert (data.id, data.version, data.status, data.order, data.center) == (
        delivery.pk,
        delivery.version,
        "assigned",
        delivery.order_id,
        "gangnam",
    )
    assert (data.rider, data.rider_name, data.shop, data.address) == (
        delivery.rider_id,
        delivery.rider.name,
        delivery.shop_id,
        delivery.order.address,
    )


def test_order_event_builds_valid_payload_on_center_stream(delivery):
    """order_event() puts a valid order payload on orders:<center>."""
    order = delivery.order

    event = order_event("order.created", order)

    assert (event.stream, event.name) == ("orders:gangnam", "order.created")
    data = EVENT_SCHEMAS["order.created"].model_validate(event.data)
    assert (data.id, data.version, data.status, data.delivery) == (order.pk, order.version, "placed", delivery.pk)
    assert [item.model_dump() for item in data.items] == order.items


def test_rider_status_event_builds_valid_payload_on_center_stream(delivery):
    """rider_status_event() puts a valid rider payload, with its derived status, on riders:<center>."""
    rider = current_rider(delivery.rider_id)

    event = rider_status_event(rider)

    assert (event.stream, event.name) == ("riders:gangnam", "rider.status")
    data = EVENT_SCHEMAS["rider.status"].model_validate(event.data)
    assert (data.id, data.version, data.status, data.on_duty, data.load) == (rider.pk, rider.version, "busy", True, 1)


def test_assignment_new_event_goes_to_riders_user_stream(delivery):
    """assignment_new_event() sends the delivery and its order to the rider's private user:<id> stream."""
    event = assignment_new_event(delivery)

    assert (event.stream, event.name) == (f"user:{delivery.rider.user_id}", "assignment.new")
    data = EVENT_SCHEMAS["assignment.new"].model_validate(event.data)
    assert (data.delivery.id, data.order.id) == (delivery.pk, delivery.order_id)


def test_assignment_revoked_event_goes_to_given_riders_user_stream(delivery):
    """assignment_revoked_event() goes to the given rider's user stream with the reason (not picked up by default)."""
    rider = current_rider(delivery.rider_id)

    event = assignment_revoked_event(delivery, rider=rider, reason="reassigned")

    assert (event.stream, event.name) == (f"user:{rider.user_id}", "assignment.revoked")
    data = EVENT_SCHEMAS["assignment.revoked"].model_validate(event.data)
    assert (data.delivery.id, data.reason, data.was_picked_up) == (delivery.pk, "reassigned", False)


def test_build_returns_json_ready_data(delivery):
    """build() returns plain JSON data: datetimes as ISO strings, nested models as dicts."""
    event = assignment_new_event(delivery)

    assert json.loads(json.dumps(event.data)) == event.data
    assert isinstance(event.data["delivery"]["assigned_at"], str)
    assert isinstance(event.data["order"]["items"][0], dict)


def test_build_validates_dict_payload(db):
    """build() accepts a dict payload that fits the event's schema."""
    event = build("broadcast:all", "notice", {"text": "Service resumes at 18:00"})

    assert event == PendingEvent(
        stream="broadcast:all", name="notice", data={"text": "Service resumes at 18:00", "level": "info"}
    )


def test_build_rejects_unknown_event_name(db):
    """build() with an event name that has no schema raises KeyError."""
    with pytest.raises(KeyError):
        build("broadcast:all", "notice.unknown", {"text": "hello"})


def test_build_rejects_invalid_dict_payload(db):
    """build() with a dict that does not fit the schema raises pydantic's ValidationError."""
    with pytest.raises(pydantic.ValidationError):
        build("broadcast:all", "notice", {"text": ""})


def test_build_rejects_payload_of_another_schema(delivery):
    """build() refuses a model of another event's schema (a delivery passed as an order)."""
    with pytest.raises(pydantic.ValidationError):
        build("orders:gangnam", "order.updated", delivery_event("delivery.updated", delivery).data)


@pytest.mark.parametrize("name", EVENT_NAMES)
def test_event_schemas_accept_builder_payloads(payloads, name):
    """Every event schema accepts the payload its builder makes."""
    EVENT_SCHEMAS[name].model_validate(payloads[name])


@pytest.mark.parametrize("name", EVENT_NAMES)
def test_event_schemas_reject_unknown_fields(payloads, name):
    """Every event schema rejects a payload with a field it does not define (extra='forbid')."""
    with pytest.raises(pydantic.ValidationError, match="Extra inputs are not permitted"):
        EVENT_SCHEMAS[name].model_validate({**payloads[name], "surprise": 1})


@pytest.mark.parametrize("name", EVENT_NAMES)
def test_event_schemas_reject_missing_fields(payloads, name):
    """Every event schema rejects a payload missing any one of its required fields."""
    fields = required_fields(name)
    assert fields
    for field in fields:
        payload = {key: value for key, value in payloads[name].items() if key != field}
        with pytest.raises(pydantic.ValidationError, match="Field required"):
            EVENT_SCHEMAS[name].model_validate(payload)


def test_event_schemas_reject_unknown_fields_in_nested_entities(payloads):
    """An assignment's nested delivery refuses unknown fields too."""
    payload = payloads["assignment.new"]
    nested = {**payload, "delivery": {**payload["delivery"], "surprise": 1}}

    with pytest.raises(pydantic.ValidationError):
        EVENT_SCHEMAS["assignment.new"].model_validate(nested)


def test_event_schemas_are_immutable(payloads):
    """A validated payload cannot be changed after the fact (frozen models)."""
    data = DeliveryData.model_validate(payloads["delivery.updated"])

    with pytest.raises(pydantic.ValidationError):
        data.version = 99


def test_event_schemas_cover_protocol_domain_events():
    """Every delivery, order and rider event named in protocol §1 has a schema."""
    protocol_names = {
        "delivery.created",
        "delivery.assigned",
        "delivery.unassigned",
        "delivery.picked_up",
        "delivery.delivered",
        "delivery.cancelled",
        "delivery.updated",
        "order.created",
        "order.updated",
        "order.cancelled",
        "order.notice",
        "rider.status",
        "assignment.new",
        "notice",
    }

    assert protocol_names <= set(EVENT_SCHEMAS)


@pytest.mark.parametrize(
    ("item", "valid"),
    [
        ({"name": "Fried chicken", "qty": 1}, True),
        ({"name": "Fried chicken", "qty": 99}, True),
        ({"name": "Fried chicken", "qty": 0}, False),
        ({"name": "Fried chicken", "qty": 100}, False),
        ({"name": "", "qty": 1}, False),
        ({"name": "N" * 101, "qty": 1}, False),
        ({"qty": 1}, False),
    ],
)
def test_order_item_limits(item, valid):
    """An order item needs a name of 1–100 characters and a qty from 1 to 99."""
    if valid:
        assert OrderItem.model_validate(item).model_dump() == item
    else:
        with pytest.raises(pydantic.ValidationError):
            OrderItem.model_validate(item)


@pytest.mark.parametrize(("text", "valid"), [("x", True), ("x" * 2000, True), ("", False), ("x" * 2001, False)])
def test_notice_text_limits(text, valid):
    """A notice's text is 1–2000 characters."""
    if valid:
        assert NoticeData.model_validate({"text": text}).level == "info"
    else:
        with pytest.raises(pydantic.ValidationError):
            NoticeData.model_validate({"text": text})
