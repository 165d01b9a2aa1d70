"""Pages of the call center and the dispatchers (the board itself is built by the board issue)."""

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.cache import patch_vary_headers

from core import access, strict_input
from core.models import Center
from deliveries import selectors
from deliveries.board import ROW_HEIGHT, read_board_window
from deliveries.models import Delivery
from deliveries.selectors import BoardFilter
from realtime.bus import redis_health
from riders import suggestions

FIRST_WINDOW = 60  # rows rendered around the viewport: a screenful plus overscan
DRAWER_SUGGESTIONS = 3  # the best riders at a glance; the assign dialog lists them all


@login_required
def home(request):
    """Send each user to the first page they may open (core.access.pages_for), the admin for superusers."""
    pages = access.pages_for(request.user)
    if pages:
        return redirect(pages[0].url_name, **pages[0].url_kwargs)
    if access.access_for(request.user).role == access.Role.DISPATCHER:
        raise PermissionDenied("You are not assigned to a center yet.")
    raise PermissionDenied("Your account has no role yet. Ask an admin.")


def _require_role(request, *roles):
    if access.access_for(request.user).role not in roles:
        raise PermissionDenied("This page is not for your role.")


@login_required
def dispatch_overview(request):
    """HQ: every center side by side, kept live by the page script."""
    _require_role(request, access.Role.HQ)
    return render(request, "deliveries/overview.html", _overview_context())


@login_required
def overview_cards(request):
    _require_role(request, access.Role.HQ)
    return render(request, "deliveries/overview.html#cards", _overview_context())


def _overview_context() -> dict:
    centers = selectors.centers_overview(now=timezone.now())
    return {"centers": centers, "streams": [f"{ns}:{c['code']}" for c in centers for ns in ("deliveries", "riders")]}


def board_center(request, center: str) -> Center:
    """The center of a board (or replay) URL, if the user dispatches it (an unknown center is refused the same way)."""
    center_obj = Center.objects.filter(code=center).first()
    if center_obj is None or not access.can_dispatch(request.user, center):
        raise PermissionDenied("You do not dispatch this center.")
    return center_obj


@login_required
def dispatch_board(request, center: str):
    """The live board: the first row window, counts, riders and map, all rendered on the server.

    While Redis is down the riders come from PostgreSQL alone, all stale, and the page says so.
    """
    center_obj = board_center(request, center)
    board = BoardFilter.from_query(request.GET)
    window = read_board_window(center_code=center, board=board, offset=0, limit=FIRST_WINDOW)
    riders = suggestions.rider_board_rows(center_code=center)
    context = {
        "center": center_obj,
        "board": board,
        "window": window,
        "chips": [
            {"value": value, "label": label, "count": window.counts[value], "checked": value in board.statuses}
            for value, label in Delivery.Status.choices
        ],
        "riders": riders,
        "positions_live": not redis_health.is_down,
        "centers": [page for page in access.pages_for(request.user) if page.center],  # the navigation's boards
        "config": board_config(center_obj, window),
    }
    return render(request, "deliveries/board.html", context)


@login_required
def board_rows(request, center: str):
    """A window of rows, with counts and the stream head in data attributes.

    htmx (the board's `#rows`) also gets the chip counts, the total and the list height, rendered by
    the page's own partials and swapped out of band.
    """
    board_center(request, center)
    window = read_board_window(
        center_code=center,
        board=BoardFilter.from_query(request.GET),
        offset=_int(request.GET.get("offset"), 0),
        limit=_int(request.GET.get("limit"), FIRST_WINDOW),
    )
    partial = "refresh" if request.htmx else "window"
    response = render(request, f"deliveries/board.html#{partial}", {"window": window})
    patch_vary_headers(response, ["HX-Request"])
    return response


@login_required
def delivery_drawer(request, center: str, delivery_id: int):
    """The delivery detail drawer: timeline, order details, rider, and the server's best riders for it."""
    board_center(request, center)
    delivery = selectors.delivery_with_timeline(delivery_id)
    if delivery is None or delivery.center.code != center:
        raise Http404("No such delivery.")
    context = {
        "delivery": delivery,
        "order": delivery.order,
        "suggestions": selectors.suggested_riders(delivery=delivery, limit=DRAWER_SUGGESTIONS),
    }
    return render(request, "deliveries/board.html#drawer", context)


MAX_OFFSET = 1_000_000  # far beyond any day's deliveries; keeps the value inside PostgreSQL's bigint


def _int(text, default: int) -> int:
    """A window bound from the query, capped at MAX_OFFSET; anything but digits means the default."""
    try:
        return strict_input.whole_number(text, maximum=MAX_OFFSET) if text else default
    except strict_input.StrictInputError:
        return default


def board_config(center: Center, window) -> dict:
    """Settings the board script needs, passed once as JSON."""
    return {
        "center": center.code,
        "map": {
            "lat": center.lat,
            "lng": center.lng,
            "tiles": settings.MAP_TILE_URL,
            "attribution": settings.MAP_TILE_ATTRIBUTION,
        },
        "stream": {"name": f"deliveries:{center.code}", "epoch": window.epoch, "head": window.head},
        "sla": {
            "unassigned_minutes": settings.SLA_UNASSIGNED_MINUTES,
            "stale_gps_seconds": suggestions.gps_stale_seconds(),
        },
        "suggest": suggestions.scoring_params(),
        "row_height": ROW_HEIGHT,
        "window": FIRST_WINDOW,
    }
