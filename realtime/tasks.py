"""Periodic real-time tasks (Celery beat). Each is idempotent: an overlapping run is harmless."""

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from realtime import outbox
from realtime.presence import record_last_run


@shared_task
def sweep_outbox() -> int:
    """Publish events whose publish after commit never happened (a crash, a Redis outage)."""
    published = outbox.republish_unpublished()
    record_last_run("sweep_outbox")
    return published


@shared_task
def prune_history() -> int:
    """Drop stream history past its retention (protocol §1: at least 24 hours)."""
    return outbox.prune_history(before=timezone.now() - settings.EVENT_RETENTION)


@shared_task
def reconcile_streams() -> int:
    """Send each center stream its reconcile frame (head + entity versions), every 2 minutes."""
    from realtime.reconcile import publish_reconcile_frames

    sent = publish_reconcile_frames()
    record_last_run("reconcile_streams")
    return sent
