"""The call-center intake form: what the agent typed, read into `OrderInput`'s fields and shown back.

Only parsing lives here (text to numbers, a local date and time to an aware one, item rows); every
rule on the values is `OrderInput`'s (deliveries/schemas.py) or `services.take_phone_order`'s. A value
that does not parse is passed on as typed, so the schema refuses it with its own message, and the
form keeps exactly what was typed to show it again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from core import strict_input

MAX_ITEM_ROWS = 50
LOCAL_FORMATS = ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S")


def default_promise() -> datetime:
    """The promised time a new form shows: now plus SLA_DEFAULT_PROMISE_MINUTES, to the minute."""
    promised = timezone.localtime() + timedelta(minutes=settings.SLA_DEFAULT_PROMISE_MINUTES)
    return promised.replace(second=0, microsecond=0)


def local_input(value: datetime) -> str:
    """A datetime as a `datetime-local` input shows it (local time, minutes)."""
    return timezone.localtime(value).strftime("%Y-%m-%dT%H:%M")


def _coordinate(text: str):
    """A typed coordinate: None when empty, a float when it is a finite number, else the text (refused later)."""
    text = text.strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def _qty(text: str):
    try:
        return strict_input.whole_number(text.strip(), maximum=10_000)
    except strict_input.StrictInputError:
        return text


def _promised_at(text: str):
    """A `datetime-local` value in the local time zone, aware; None when empty; the text when it is no date."""
    text = text.strip()
    if not text:
        return None
    for fmt in LOCAL_FORMATS:
        try:
            return timezone.make_aware(datetime.strptime(text, fmt))
        except (ValueError, OverflowError):
            continue
    return text


@dataclass
class IntakeForm:
    """The intake form's values as typed (strings), and its errors by field."""

    customer_phone: str = ""
    customer_name: str = ""
    shop: str = ""
    address: str = ""
    lat: str = ""
    lng: str = ""
    items: list[tuple[str, str]] = field(default_factory=lambda: [("", "1")])
    note: str = ""
    promised_at: str = ""
    confirm_outside_area: bool = False
    confirm_duplicate: bool = False
    key: str = ""
    errors: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def blank(cls, *, key: str, shop: str = "") -> IntakeForm:
        """A new form for the next call: the default promised time, one empty item row, a fresh key."""
        return cls(shop=shop, promised_at=local_input(default_promise()), key=key)

    @classmethod
    def from_post(cls, post) -> IntakeForm:
        def text(name: str) -> str:
            return post.get(name, "")[:1000]  # a NUL stays: the schema refuses it with its message

        names, qtys = post.getlist("item_name")[:MAX_ITEM_ROWS], post.getlist("item_qty")[:MAX_ITEM_ROWS]
        items = [(name[:200], qty[:10]) for name, qty in zip(names, qtys, strict=False)]
        return cls(
            customer_phone=text("customer_phone"),
            customer_name=text("customer_name"),
            shop=text("shop"),
            address=text("address"),
            lat=text("lat"),
            lng=text("lng"),
            items=items or [("", "1")],
            note=text("note"),
            promised_at=text("promised_at"),
            confirm_outside_area=post.get("confirm_outside_area") == "1",
            confirm_duplicate=post.get("confirm_duplicate") == "1",
            key=text("key").replace("\x00", "")[:200],  # stored as is: PostgreSQL takes no NUL
        )

    @property
    def general_errors(self) -> list[str]:
        """Errors of the form as a whole (templates cannot read the `__all__` key)."""
        return self.errors.get("__all__", [])

    def refine(self, errors: dict[str, list[str]]) -> dict[str, list[str]]:
        """The service's errors, with a plain message for a promised time that is no date at all."""
        if "promised_at" in errors and isinstance(_promised_at(self.promised_at), str):
            errors = {**errors, "promised_at": ["Enter a date and time, e.g. 2026-12-03T19:30."]}
        return errors

    def shop_id(self) -> int | None:
        try:
            return strict_input.whole_number(self.shop, maximum=2**63 - 1)
        except strict_input.StrictInputError:
            return None

    def order_fields(self) -> dict:
        """The fields for `OrderInput` (an item row left empty is no item)."""
        items = [
            {"name": name.strip(), "qty": _qty(qty)}
            for name, qty in self.items
            if name.strip() or qty.strip() not in ("", "1")
        ]
        return {
            "customer_phone": self.customer_phone,
            "customer_name": self.customer_name,
            "address": self.address,
            "lat": _coordinate(self.lat),
            "lng": _coordinate(self.lng),
            "items": items,
            "note": self.note,
            "promised_at": _promised_at(self.promised_at),
        }
