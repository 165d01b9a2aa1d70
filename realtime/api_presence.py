"""HTTP API for the ops monitor: who is connected, across all server processes (HQ only)."""

from ninja import Router, Schema, Status

from core.access import Role, access_for
from core.api_auth import caller_of
from core.api_errors import ANY, errors
from realtime.presence import presence_snapshot

router = Router(tags=["ops"])


class ProcessOut(Schema):
    id: str
    kind: str  # "web" (a server process), "worker" or "beat" (Celery)
    host: str | None
    pid: int | None
    started: float | None
    connections: int
    cpu: float | None
    rss: int | None


class PresenceOut(Schema):
    processes: list[ProcessOut]
    connections: int
    by_stream: dict[str, int]
    by_user: dict[str, int]
    by_role: dict[str, int]
    by_center: dict[str, int]


@router.get("/presence", response={200: PresenceOut, **errors(*ANY, 403, 503)})
def presence(request):
    """Connected clients per stream, user, role, center and server process: for HQ users only."""
    caller = caller_of(request)
    # Tokens are for integrations; presence names staff, so only an HQ person may read it.
    if caller.user is None or access_for(caller.user).role != Role.HQ:
        return Status(403, {"detail": "Only HQ may see who is connected."})
    return Status(200, presence_snapshot())
