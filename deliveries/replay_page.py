"""The shift replay page (`/dispatch/<center>/replay/`) and the fragments htmx swaps into it.

Authorised exactly like the board (`views.board_center`: the center's dispatchers and HQ). The
state shown comes from `deliveries.replay`; this module parses the moment asked for, clamps it to
now, and renders. Without JavaScript the page shows one chosen moment through a plain GET form;
with it, a scrubber over the day's shift span and play at 1×, 10× or 60× fetch the moment fragment.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render
from django.utils import timezone
from django.utils.cache import patch_vary_headers

from core import strict_input
from core.models import Center
from deliveries import replay
from deliveries.selectors import MAX_ID
from deliveries.views import board_center

FIRST_DAY = date(2000, 1, 1)  # before BROS existed; bounds the moments so no arithmetic overflows
DEFAULT_LOOKBACK = timedelta(hours=1)
MOMENT_FORMAT = "Enter the moment as a date and time, e.g. 2026-01-15T10:30 (ISO 8601)."
DAY_FORMAT = "Enter a day as YYYY-MM-DD."
TIME_FORMAT = "Enter a time as HH:MM or HH:MM:SS."


class MomentRefused(Exception):
    """The moment asked for cannot be replayed; the message says why, for the user."""


def _bounded(moment: datetime) -> datetime:
    """`moment` if BROS could have recorded anything then (FIRST_DAY on), else a refusal."""
    if timezone.localtime(moment).date() < FIRST_DAY:
        raise MomentRefused(f"Choose a moment from {FIRST_DAY} on.")
    return moment


def parse_iso_moment(text: str) -> datetime:
    """An ISO 8601 date and time (local time when it names no offset), or MomentRefused."""
    try:
        moment = datetime.fromisoformat(text.strip())
        if timezone.is_naive(moment):
            moment = timezone.make_aware(moment)
        return _bounded(moment)
    except (ValueError, OverflowError):
        raise MomentRefused(MOMENT_FORMAT) from None


def parse_day_and_time(day_text: str, time_text: str) -> datetime:
    """The page form's local day and time of day, or MomentRefused naming the field at fault."""
    try:
        day = date.fromisoformat(day_text.strip())
    except ValueError:
        raise MomentRefused(DAY_FORMAT) from None
    try:
        clock = time.fromisoformat(time_text.strip() or "12:00")
    except ValueError:
        raise MomentRefused(TIME_FORMAT) from None
    if clock.tzinfo is not None:
        raise MomentRefused(TIME_FORMAT)
    try:
        return _bounded(timezone.make_aware(datetime.combine(day, clock)))
    except OverflowError:
        raise MomentRefused(f"Choose a moment from {FIRST_DAY} on.") from None


def clamp_to_now(moment: datetime) -> tuple[datetime, str]:
    """The moment, or now if it is still to come, with a notice saying so."""
    now = timezone.now()
    if moment <= now:
        return moment, ""
    return now, f"That moment has not happened yet: showing now ({timezone.localtime(now):%H:%M:%S})."


def _page_moment(request) -> tuple[datetime, str]:
    """The moment the page shows: `t`, else the form's `date` and `time`, else an hour ago."""
    if "t" in request.GET:
        return clamp_to_now(parse_iso_moment(request.GET["t"]))
    if "date" in request.GET or "time" in request.GET:
        today = timezone.localdate().isoformat()
        return clamp_to_now(parse_day_and_time(request.GET.get("date") or today, request.GET.get("time", "")))
    return timezone.now() - DEFAULT_LOOKBACK, ""


def _fragment_moment(request) -> tuple[datetime, str]:
    if "t" not in request.GET:
        raise MomentRefused(MOMENT_FORMAT)
    return clamp_to_now(parse_iso_moment(request.GET["t"]))


def _moment_context(center: Center, at: datetime, notice: str) -> dict:
    state = replay.board_at(center, at)
    return {
        "center": center,
        "at": at,
        "state": state,
        "notice": notice,
        "positions": [{"id": r.id, "name": r.name, "lat": r.lat, "lng": r.lng, "stale": r.stale} for r in state.riders],
    }


@login_required
def replay_page(request, center: str):
    """The replay at one moment and a scrubber over its day's shift; a refused moment is a 400 saying why."""
    center_obj = board_center(request, center)
    context = {
        "center": center_obj,
        "config": {
            "map": {
                "lat": center_obj.lat,
                "lng": center_obj.lng,
                "tiles": settings.MAP_TILE_URL,
                "attribution": settings.MAP_TILE_ATTRIBUTION,
            }
        },
    }
    try:
        at, notice = _page_moment(request)
    except MomentRefused as exc:
        context |= {
            "error": str(exc),
            "raw_date": request.GET.get("date", ""),
            "raw_time": request.GET.get("time", ""),
        }
        return render(request, "deliveries/replay.html", context, status=400)
    local = timezone.localtime(at)
    start, end = replay.shift_span(center_obj, local.date())
    start, end = min(start, at), max(end, at)
    context |= _moment_context(center_obj, at, notice)
    context |= {
        "raw_date": local.date().isoformat(),
        "raw_time": f"{local:%H:%M:%S}",
        "span_start": start,
        "span_end": end,
        "span_seconds": int((end - start).total_seconds()),
        "offset_seconds": int((at - start).total_seconds()),
        "selected": _selected(request, center_obj, at),
    }
    context["config"] |= {"span_start": start.isoformat(), "at": at.isoformat(), "time_zone": settings.TIME_ZONE}
    return render(request, "deliveries/replay.html", context)


def _selected(request, center: Center, at: datetime) -> replay.DeliveryAt | None:
    """The delivery whose timeline the page shows (`delivery`, from a row's link without JavaScript).

    Anything but an id of this center's delivery that existed at `at` shows no timeline.
    """
    try:
        delivery_id = strict_input.whole_number(request.GET.get("delivery", ""), maximum=MAX_ID)
    except strict_input.StrictInputError:
        return None
    return replay.delivery_at(center, delivery_id, at)


@login_required
def replay_at(request, center: str):
    """The moment fragment (counts, rows, riders, events) at `t`; a refused `t` is a 400 with the reason."""
    center_obj = board_center(request, center)
    try:
        at, notice = _fragment_moment(request)
    except MomentRefused as exc:
        return render(request, "deliveries/replay.html#problem", {"error": str(exc)}, status=400)
    response = render(request, "deliveries/replay.html#moment", _moment_context(center_obj, at, notice))
    patch_vary_headers(response, ["HX-Request"])
    return response


@login_required
def replay_delivery(request, center: str, delivery_id: int):
    """One delivery's timeline up to `t`; 404 if it was not this center's or did not exist yet then."""
    center_obj = board_center(request, center)
    try:
        at, _notice = _fragment_moment(request)
    except MomentRefused as exc:
        return render(request, "deliveries/replay.html#problem", {"error": str(exc)}, status=400)
    selected = replay.delivery_at(center_obj, delivery_id, at)
    if selected is None:
        raise Http404("This center had no such order at that moment.")
    return render(request, "deliveries/replay.html#timeline", {"selected": selected, "at": at, "center": center_obj})
