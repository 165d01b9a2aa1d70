"""Periodic real-time tasks (Celery beat). Each is idempotent: an overlapping run is harmless."""

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from realtime import outbox, webhooks
from realtime.presence import record_last_run


@shared_task
def sweep_outbox() -> int:
    """Publish events whose publish after commit never happened (a crash, a Redis outage)."""
    published = outbox.republish_unpublished()
    record_last_run("sweep_outbox")
    return published


@shared_task
def prune_history() -> int:
    """Drop stream history past its retention (protocol §1: at least 24 hours), and the webhook
    deliveries finished before theirs (WEBHOOK_LOG_RETENTION_DAYS)."""
    now = timezone.now()
    pruned = outbox.prune_history(before=now - settings.EVENT_RETENTION)
    return pruned + webhooks.prune_log(before=now - settings.WEBHOOK_LOG_RETENTION)


@shared_task
def reconcile_streams() -> int:
    """Send each center stream its reconcile frame (head + entity versions), every 2 minutes."""
    from realtime.reconcile import publish_reconcile_frames

    sent = publish_reconcile_frames()
    record_last_run("reconcile_streams")
    return sent


@shared_task
def dispatch_webhooks(max_batches: int = 20) -> int:
    """Turn new outbox events into webhook deliveries and queue each for sending.

    Batch after batch while they come full, up to `max_batches`; the next run takes the rest.
    """
    created = 0
    for _ in range(max_batches):
        dispatched = webhooks.dispatch_new_events()
        for delivery_pk in dispatched.deliveries:
            send_webhook.delay(delivery_pk)
        created += len(dispatched.deliveries)
        if not dispatched.more:
            break
    return created


@shared_task
def send_webhook(delivery_pk: int) -> None:
    """One attempt at a webhook delivery; a failure queues the next after its back-off."""
    retry_in = webhooks.send_delivery(delivery_pk)
    if retry_in is not None:
        send_webhook.apply_async((delivery_pk,), countdown=retry_in)


@shared_task
def retry_webhooks() -> int:
    """Queue deliveries whose attempt is overdue: their task was lost or its worker died."""
    overdue = webhooks.overdue_deliveries()
    for delivery_pk in overdue:
        send_webhook.delay(delivery_pk)
    return len(overdue)
