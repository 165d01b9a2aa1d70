"""Reconciliation (design.md): every 2 minutes each logged center stream gets a `reconcile` frame.

A frame carries the stream's head and the version of every entity a client may hold, computed with
one query per center stream and one consistent snapshot, never per client. A client behind the
head fetches the missing events; one holding a different version re-fetches that entity. This is
the safety net under the live path's exactness, not a substitute for it.
"""

from __future__ import annotations

from core.models import Center
from realtime import frames, outbox, registry
from realtime.bus import channel_for, get_redis, message_for
from realtime.snapshots import in_one_snapshot


def reconcile_frame(namespace: str, center: str) -> str:
    """The `reconcile` frame of one center stream: head and versions from one snapshot."""
    stream = f"{namespace}:{center}"
    versions_of = registry.kind(namespace).versions
    outbox.stream_position(stream)  # outside the snapshot: see realtime.snapshots.read_snapshot

    def read():
        epoch, head = outbox.stream_position(stream)
        return frames.dumps(
            {
                "type": "reconcile",
                "stream": stream,
                "epoch": epoch,
                "head": head,
                "versions": versions_of(center),
            }
        )

    return in_one_snapshot(read)


def publish_reconcile_frames() -> int:
    """Send every reconciled center stream (deliveries, orders, riders) its frame; return how many."""
    namespaces = [k.namespace for k in registry.kinds() if k.versions is not None and k.rooms == "center"]
    pipe = get_redis().pipeline(transaction=False)
    count = 0
    for center in Center.objects.values_list("code", flat=True):
        for namespace in namespaces:
            stream = f"{namespace}:{center}"
            pipe.publish(channel_for(stream), message_for(None, reconcile_frame(namespace, center)))
            count += 1
    pipe.execute()
    return count
