"""HTTP API for riders: the center's riders with status, load and last position; shifts."""

from datetime import datetime

from django.http import Http404
from ninja import Field, Query, Router, Schema

from core import access
from core.api_auth import caller_of, idempotent
from core.api_errors import ANY, WITH_BODY, errors
from core.models import ROOM_CODE_VALIDATOR
from realtime.events import RiderData, rider_data
from realtime.ratelimit import limit_commands
from riders import selectors, services

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


# Strict: `1` is no duty and "3" no version (pydantic would coerce both).
class DutyIn(Schema):
    on_duty: bool = Field(strict=True)
    version: int | None = Field(None, strict=True)


def _visible_rider(request, rider_id: int):
    """Return the rider if the caller may change their shift, else 404 as if it did not exist.

    The rider themself, the center's dispatchers and HQ; a token whose streams cover the center's
    `riders` stream (the service then checks its commands). Everyone else is told "No such rider.".
    """
    caller = caller_of(request)
    rider = selectors.rider_by_id(rider_id)
    if rider is not None:
        code = rider.center.code
        if caller.token is not None:
            if access.token_allows(caller.token.streams, f"riders:{code}"):
                return rider
        elif access.can_set_duty(caller.user, center_code=code, rider_id=rider.pk):
            return rider
    raise Http404("No such rider.")


@router.post("/riders/{int:rider_id}/duty", response={200: RiderData, **errors(*WITH_BODY, 403, 404, 409, 429)})
@limit_commands
@idempotent
def set_duty(request, rider_id: int, payload: DutyIn):
    """Start (`on_duty: true`) or end a rider's shift: the rider themself, the center's dispatchers, HQ."""
    caller = caller_of(request)
    _visible_rider(request, rider_id)
    rider = services.set_rider_duty(
        actor=caller.actor, rider_id=rider_id, on_duty=payload.on_duty, expected_version=payload.version
    )
    return 200, rider_data(rider).model_dump(mode="json")
