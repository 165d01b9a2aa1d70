"""Commands on riders: shifts (duty on/off). GPS fixes go through `riders.positions`."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from core import access
from core.actors import actor_label
from core.exceptions import InvalidTransition, StaleVersion
from realtime.events import rider_status_event
from realtime.outbox import emit
from riders.models import Rider
from riders.positions import forget_position


@transaction.atomic
def set_rider_duty(*, actor, rider_id: int, on_duty: bool, expected_version: int | None = None) -> Rider:
    """Start or end a rider's shift. Locks the rider.

    A rider with active deliveries cannot go off duty: they would be lost to the board.
    """
    # Lock without a join, then read the center: a row joined by the locking query may predate
    # the wait for the lock (see deliveries.services._lock_delivery).
    rider = Rider.objects.select_for_update(no_key=True).get(pk=rider_id)
    if actor is not None and not access.can_set_duty(actor, center_code=rider.center.code, rider_id=rider.pk):
        raise PermissionDenied("You cannot change this rider's shift.")
    if expected_version is not None and expected_version != rider.version:
        changed_by = {"by": rider.changed_by, "at": rider.changed_at.isoformat()} if rider.changed_at else None
        raise StaleVersion(
            f"The rider changed since you looked (version {expected_version}, now {rider.version}).",
            entity=rider,
            changed_by=changed_by,
        )
    if rider.on_duty == on_duty:
        raise InvalidTransition(f"{rider.name} is already {'on' if on_duty else 'off'} duty.", entity=rider)
    if not on_duty and rider.load:
        raise InvalidTransition(f"{rider.name} still has {rider.load} active deliveries.", entity=rider)
    rider.on_duty = on_duty
    rider.version += 1
    rider.changed_by, rider.changed_at = actor_label(actor), timezone.now()
    rider.save(update_fields=["on_duty", "version", "changed_by", "changed_at"])
    emit([rider_status_event(rider)])
    if not on_duty:  # an off-duty rider leaves the live map
        center_code = rider.center.code
        transaction.on_commit(lambda: forget_position(rider_id=rider.pk, center_code=center_code), robust=True)
    return rider
