"""The order as a caller types it: one schema for the API body, `services.create_order` and the call-center page.

Every rule on order input lives here, with the message a person reads. Each field error is a
`value_error` at the field itself (`loc` `["customer_phone"]`, `["items"]`, never deeper), and all
fields are checked at once, so a form can show every mistake together. Types are strict: a bool
is not a number, "37.5" is not a coordinate. `OrderInput.clean` gives the same errors as Django's
`ValidationError({field: message})` for callers outside a ninja request.
"""

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone
from ninja import Schema
from pydantic import BeforeValidator, Field, ValidationInfo, field_validator
from pydantic import ValidationError as SchemaError
from pydantic_core import PydanticCustomError

from realtime.events import OrderItem

PHONE = re.compile(r"^\+?[0-9][0-9 ()-]{5,27}[0-9]$")  # at most 30 characters, like the column


def refuse(message: str) -> PydanticCustomError:
    """A field error whose message is shown as is (no "Value error, " prefix)."""
    return PydanticCustomError("value_error", message)


def _text(value: Any, *, required: str | None = None, max_length: int, allow_nul: bool = False) -> str:
    """Stripped text (None counts as empty), refused when not text, with NUL, empty if required, or too long."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise refuse("Must be text.")
    if not allow_nul and "\x00" in value:
        raise refuse("Contains a NUL character.")
    value = value.strip()
    if required and not value:
        raise refuse(required)
    if len(value) > max_length:
        raise refuse(f"At most {max_length} characters.")
    return value


def _phone(value: Any) -> str:
    # A NUL never matches PHONE, so the phone needs no NUL check of its own.
    value = _text(value, max_length=30, allow_nul=True)
    if not PHONE.match(value):
        raise refuse("Enter a phone number like 010-1234-5678.")
    return value


def _number(value: Any) -> Any:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise refuse("Must be a number.")
    return value


def _text_type(*, required: str | None = None, max_length: int):
    """A text field with its rules, documented as a string of at most `max_length` characters."""
    check = BeforeValidator(lambda value: _text(value, required=required, max_length=max_length))
    return Annotated[str, check, Field(json_schema_extra={"maxLength": max_length})]


CustomerName = _text_type(required="Enter the customer's name.", max_length=100)
Address = _text_type(required="Enter the delivery address.", max_length=200)
Note = _text_type(max_length=500)
Phone = Annotated[str, BeforeValidator(_phone), Field(json_schema_extra={"maxLength": 30})]
Coordinate = Annotated[float | None, BeforeValidator(_number)]


class OrderInput(Schema):
    """What a caller gives to take an order (the shop and the acting user come separately)."""

    customer_name: CustomerName
    customer_phone: Phone
    address: Address
    # lng is declared before lat so that lat's check sees it: both-or-neither and the range are
    # reported on "lat", the pair's first field, even beside other fields' errors.
    lng: Coordinate = None
    lat: Coordinate = Field(None, validate_default=True)
    items: list[OrderItem] = Field(json_schema_extra={"minItems": 1})
    note: Note = ""
    promised_at: datetime | None = None

    @field_validator("lat", mode="after")
    @classmethod
    def _coordinates(cls, lat: float | None, info: ValidationInfo) -> float | None:
        if "lng" not in info.data:  # lng itself is invalid and says so
            return lat
        lng = info.data["lng"]
        if (lat is None) != (lng is None):
            raise refuse("Give both lat and lng, or neither.")
        # NaN fails every comparison: it is out of range too.
        if lat is not None and not (-90 <= lat <= 90 and -180 <= lng <= 180):
            raise refuse("Coordinates out of range.")
        return lat

    @field_validator("items", mode="wrap")
    @classmethod
    def _items(cls, items: Any, handler) -> list[OrderItem]:
        if not isinstance(items, list) or not items:
            raise refuse("Add at least one item.")
        if any(isinstance(item, dict) and "\x00" in str(item.get("name", "")) for item in items):
            raise refuse("Contains a NUL character.")
        try:
            return [OrderItem.model_validate(item, strict=True) for item in items]
        except SchemaError:
            raise refuse('Each item needs a "name" and a "qty" from 1 to 99.') from None

    @field_validator("promised_at", mode="after")
    @classmethod
    def _promised_at(cls, promised_at: datetime | None) -> datetime | None:
        """The promised time in UTC, between now and the longest pre-order.

        The bound also keeps every stored time convertible to any local time zone: a year-9999
        promise once overflowed each page that showed it.
        """
        if promised_at is None:
            return None
        if timezone.is_naive(promised_at):
            raise refuse("Include a UTC offset, e.g. 2026-11-21T19:30:00+09:00.")
        now = timezone.now()
        too_late = f"Promise a time at most {settings.ORDER_PROMISE_MAX_DAYS} days ahead."
        try:
            promised_at = promised_at.astimezone(UTC)
        except OverflowError:  # beyond year 9999 or before year 1 once converted
            raise refuse(too_late) from None
        if promised_at < now - timedelta(minutes=1):
            raise refuse("The promised time is in the past.")
        if promised_at > now + timedelta(days=settings.ORDER_PROMISE_MAX_DAYS):
            raise refuse(too_late)
        return promised_at

    @classmethod
    def clean(cls, **fields) -> "OrderInput":
        """Validate outside a ninja request: the same errors, as Django's `ValidationError({field: message})`."""
        try:
            return cls.model_validate(fields)
        except SchemaError as exc:
            raise ValidationError(field_errors(exc)) from None


def field_errors(exc: SchemaError) -> dict[str, list[str]]:
    """The schema's errors by field name (a missing field reads "Field required")."""
    errors: dict[str, list[str]] = {}
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "__all__"
        errors.setdefault(field, []).append(error["msg"])
    return errors
