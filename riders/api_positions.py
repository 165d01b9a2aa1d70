"""HTTP API for a rider's buffered GPS fixes (protocol §4 `POST /api/v1/positions`): a thin adapter.

While its socket is down the rider app keeps its fixes and posts them here when it can. Each
entry is checked like a WebSocket `position` frame; the valid ones go through the same per-second
coalescing, so posting the same fixes twice keeps nothing new (no Idempotency-Key needed).
"""

from typing import Any

from ninja import Router, Schema, Status

from core.access import access_for
from core.api_auth import caller_of
from core.api_errors import WITH_BODY, errors
from riders.positions import NotARider, TooManyFixes, take_rider_fixes

router = Router(tags=["positions"])

MAX_POSITIONS = 500


class PositionsIn(Schema):
    positions: list[Any]


class PositionErrorOut(Schema):
    index: int
    msg: str


class PositionsAcceptedOut(Schema):
    accepted: int
    dropped: int
    errors: list[PositionErrorOut]


@router.post(
    "/positions",
    response={202: PositionsAcceptedOut, **errors(*WITH_BODY, 403, 503)},
    summary="Send a rider's buffered GPS fixes",
)
def post_positions(request, body: PositionsIn):
    """Accept the calling rider's fixes: at most one per second is kept, invalid entries are listed.

    `accepted` counts the fixes kept, `dropped` the valid ones coalesced away (under a second after
    another, or older than the rider's latest), `errors` the invalid entries by index.
    """
    caller = caller_of(request)
    rider_access = access_for(caller.user) if caller.token is None else None
    try:
        taken = take_rider_fixes(rider_access, body.positions, max_entries=MAX_POSITIONS)
    except NotARider as exc:
        return Status(403, {"detail": exc.message})
    except TooManyFixes as exc:
        return Status(413, {"detail": str(exc)})
    invalid = [{"index": index, "msg": msg} for index, msg in taken.errors]
    return Status(202, {"accepted": taken.accepted, "dropped": taken.dropped, "errors": invalid})
