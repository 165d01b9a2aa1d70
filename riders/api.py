"""HTTP API for riders: the center's riders with status, load and last position."""

from datetime import datetime

from django.http import Http404
from ninja import Query, Router

from core import access
from core.api_auth import caller_of
from core.api_errors import ANY, errors
from core.models import ROOM_CODE_VALIDATOR
from realtime.events import RiderData, rider_data
from riders import selectors

router = Router(tags=["riders"])


class RiderOut(RiderData):
    last_lat: float | None
    last_lng: float | None
    last_accuracy: float | None
    last_position_at: datetime | None


@router.get("/riders", response={200: list[RiderOut], **errors(*ANY, 404, 422)})
def riders(request, center: str = Query(..., example="gangnam")):
    """Riders of a center: for its dispatchers and HQ."""
    caller = caller_of(request)
    # A malformed code (a NUL byte would reach PostgreSQL) is refused like a missing center.
    if (
        caller.user is None
        or not ROOM_CODE_VALIDATOR.regex.fullmatch(center)
        or not access.can_dispatch(caller.user, center)
    ):
        raise Http404("No such center.")
    return [
        RiderOut(
            **rider_data(rider).model_dump(),
            last_lat=rider.last_lat,
            last_lng=rider.last_lng,
            last_accuracy=rider.last_accuracy,
            last_position_at=rider.last_position_at,
        )
        for rider in selectors.center_riders(center)
    ]
