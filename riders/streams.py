"""The streams riders owns, registered with `realtime` when the app is ready.

`riders:<center>` carries the riders' status (duty, load) for the center's dispatchers and HQ;
`positions:<center>` is ephemeral: once a second a batch of the riders' latest GPS fixes, and a
new subscriber first gets everyone's current position. Riders send fixes as `position` frames.
"""

from channels.db import database_sync_to_async

from core.access import Access, Role
from realtime import registry
from realtime.events import rider_data
from realtime.hub import Hub, get_hub, on_hub_start
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


async def accept_position_frame(access: Access, fields: dict) -> None:
    """A rider's `position` frame: validated, rate-limited and queued for the next batch, on the event loop."""
    try:
        taken = await positions.take_rider_fixes_async(access, [fields], redis=get_hub().redis)
    except positions.NotARider as exc:
        raise registry.FrameRefused("forbidden", exc.message) from None
    except positions.PositionsUnavailable as exc:
        raise registry.FrameRefused("internal", exc.message) from None
    if taken.errors:
        raise registry.FrameRefused("bad_request", taken.errors[0][1])


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
