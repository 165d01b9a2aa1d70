"""Periodic retention of deliveries' data (Celery beat)."""

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from deliveries import services


@shared_task
def prune_timeline() -> int:
    """Delete timeline entries older than TIMELINE_RETENTION_DAYS; with 0 (the default) keep them all."""
    if settings.TIMELINE_RETENTION_DAYS <= 0:
        return 0
    return services.prune_timeline(before=timezone.now() - timedelta(days=settings.TIMELINE_RETENTION_DAYS))
