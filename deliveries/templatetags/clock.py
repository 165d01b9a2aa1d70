"""`clock`: a time of day in the local time zone that never fails on a far-off date."""

from datetime import UTC

from django import template
from django.utils import dateformat, timezone

register = template.Library()


@register.filter
def clock(value, fmt: str = "H:i") -> str:
    """Format an aware datetime in local time; a date that local time cannot hold shows in UTC.

    Near year 9999 the conversion to local time overflows; such a time (stored before promised
    times were bounded) must not take down the page that shows it.
    """
    if not value:
        return ""
    try:
        return dateformat.format(timezone.localtime(value), fmt)
    except OverflowError:
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


@register.filter
def age(value, now) -> str:
    """How long ago `value` was, shortly: "4 min", "2 h 05"; "now" under a minute."""
    if not value or not now:
        return ""
    minutes = max(0, int((now - value).total_seconds() // 60))
    if minutes < 1:
        return "now"
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d}"
