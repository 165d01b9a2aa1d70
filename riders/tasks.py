"""Periodic retention of riders' data (Celery beat)."""

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from riders import services


@shared_task
def prune_position_samples() -> int:
    """Delete GPS history older than POSITION_RETENTION_DAYS."""
    return services.prune_position_samples(before=timezone.now() - settings.POSITION_RETENTION)
