"""Commands on centers (admin).

Core stays below every other layer and emits no events, and a center edit needs none: no stream
carries centers. A center's code names its streams (`deliveries:<code>`, …), its pages and its
riders' rooms, so it never changes once the center exists; its name and map centre are page
chrome that a page reads when it loads. So `save_center` only locks, checks and bumps `version`,
and the Center admin can stay in core.
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction

from core import access
from core.exceptions import InvalidTransition, StaleVersion
from core.models import Center, IdempotencyRecord
from core.retention import delete_in_batches


@transaction.atomic
def save_center(
    *,
    actor,
    center_id: int | None = None,
    code: str,
    name: str,
    lat: float,
    lng: float,
    expected_version: int | None = None,
) -> Center:
    """Add a center (`center_id` None) or change its name or map centre. Locks the center."""
    access.authorize(actor, "centers.manage")
    if center_id is None:
        center = Center(code=code, name=name, lat=lat, lng=lng)
        center.full_clean(exclude=["version"])
        center.save()
        return center
    center = Center.objects.select_for_update(no_key=True).get(pk=center_id)
    if expected_version is not None and expected_version != center.version:
        raise StaleVersion(
            f"The center changed since you looked (version {expected_version}, now {center.version}).",
            entity=center,
        )
    if code != center.code:
        raise InvalidTransition(
            f"A center's code names its streams and pages: {center.code} cannot be renamed.", entity=center
        )
    values = {"name": name, "lat": lat, "lng": lng}
    changed = [field for field, value in values.items() if getattr(center, field) != value]
    if not changed:
        return center
    for field in changed:
        setattr(center, field, values[field])
    center.full_clean(exclude=["version"])
    center.version += 1
    center.save(update_fields=[*changed, "version"])
    return center


def prune_idempotency_records(*, before: datetime) -> int:
    """Forget idempotency records created before `before`: a retry that late runs afresh."""
    return delete_in_batches(IdempotencyRecord.objects.filter(created_at__lt=before))
