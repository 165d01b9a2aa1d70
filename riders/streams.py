"""The streams riders owns, registered with `realtime` when the app is ready.

`riders:<center>` carries the riders' status (duty, load) for the center's dispatchers and HQ;
`positions:<center>` is ephemeral: once a second a batch of the riders' latest GPS fixes, and a
new subscriber first gets everyone's current position. Riders send fixes as `position` frames.
"""

from channels.db import database_sync_to_async
from django.utils import timezone

from core.access import Access, Role
from realtime import registry
from realtime.events import rider_data
from realtime.hub import Hub, on_hub_start
from riders import positions, selectors

_dispatchers = registry.center_roles(Role.HQ, Role.DISPATCHER)


def rider_items(center_code: str) -> list[dict]:
    return [rider_data(r).model_dump(mode="json") for r in selectors.center_riders(center_code)]


def rider_versions(center_code: str) -> dict[str, int]:
    rows = selectors.center_riders(center_code).order_by().values_list("pk", "version")
    return {str(pk): version for pk, version in rows}


def positions_join_frames(center_code: str) -> list[str]:
    """A new subscriber of `positions:<center>` first gets every rider's current position."""
    return [positions.positions_snapshot_frame(center_code)]


def accept_position_frame(access: Access, fields: dict) -> None:
    """A rider's `position` frame: validated, rate-limited and queued for the next batch."""
    if access.role != Role.RIDER or access.rider_id is None:
        raise registry.FrameRefused("forbidden", "Only riders send positions.")
    try:
        fix = positions.parse_fix(fields, now=timezone.now())
    except positions.InvalidFix as exc:
        raise registry.FrameRefused("bad_request", str(exc)) from None
    center = next(iter(access.centers))
    positions.accept_fixes(rider_id=access.rider_id, center_code=center, fixes=[fix])


def _start_position_batches(hub: Hub) -> None:
    """Every second, publish each center's coalesced `rider.positions` batch (one process wins per center)."""
    publish = database_sync_to_async(positions.publish_position_batches, thread_sensitive=False)
    hub.every(1.0, publish, name="positions")


def register() -> None:
    registry.register(
        registry.StreamKind(
            "riders", rooms="center", may_subscribe=_dispatchers, snapshot=rider_items, versions=rider_versions
        )
    )
    registry.register(
        registry.StreamKind(
            "positions",
            rooms="center",
            may_subscribe=_dispatchers,
            logged=False,
            snapshot=positions.current_positions,
            join_frames=positions_join_frames,
        )
    )
    registry.register_frame("position", accept_position_frame)
    on_hub_start(_start_position_batches)
