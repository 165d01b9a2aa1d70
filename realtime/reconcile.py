"""Reconciliation (design.md): every 2 minutes each logged center stream gets a `reconcile` frame.

A frame carries the stream's head and the version of every entity a client may hold, computed with
one query per center stream and one consistent snapshot, never per client. A client behind the
head fetches the missing events; one holding a different version re-fetches that entity. This is
the safety net under the live path's exactness, not a substitute for it.
"""

from __future__ import annotations

from django.db.models import Q

from core.models import Center
from deliveries import selectors
from deliveries.models import Delivery, Order
from realtime import frames, outbox
from realtime.bus import channel_for, get_redis, message_for
from realtime.snapshots import in_one_snapshot
from riders.models import Rider


def _versions(namespace: str, center: str) -> dict[str, int]:
    today = selectors.start_of_today()
    if namespace == "deliveries":
        rows = Delivery.objects.filter(center__code=center).filter(
            Q(created_at__gte=today) | Q(status__in=Delivery.OPEN_STATUSES)
        )
    elif namespace == "orders":
        rows = Order.objects.filter(center__code=center).filter(
            Q(created_at__gte=today) | Q(delivery__status__in=Delivery.OPEN_STATUSES)
        )
    else:
        rows = Rider.objects.filter(center__code=center)
    return {str(pk): version for pk, version in rows.values_list("pk", "version")}


def reconcile_frame(namespace: str, center: str) -> str:
    """The `reconcile` frame of one center stream: head and versions from one snapshot."""
    stream = f"{namespace}:{center}"
    outbox.stream_position(stream)  # outside the snapshot: see realtime.snapshots.read_snapshot

    def read():
        epoch, head = outbox.stream_position(stream)
        return frames.dumps(
            {
                "type": "reconcile",
                "stream": stream,
                "epoch": epoch,
                "head": head,
                "versions": _versions(namespace, center),
            }
        )

    return in_one_snapshot(read)


def publish_reconcile_frames() -> int:
    """Send every center's deliveries, orders and riders stream its reconcile frame; return how many."""
    pipe = get_redis().pipeline(transaction=False)
    count = 0
    for center in Center.objects.values_list("code", flat=True):
        for namespace in ("deliveries", "orders", "riders"):
            stream = f"{namespace}:{center}"
            pipe.publish(channel_for(stream), message_for(None, reconcile_frame(namespace, center)))
            count += 1
    pipe.execute()
    return count
