"""Periodic retention of core's data (Celery beat). Each is idempotent: an overlapping run is harmless."""

from importlib import import_module

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from core import services


@shared_task
def prune_idempotency_records() -> int:
    """Forget Idempotency-Key results older than IDEMPOTENCY_RETENTION_HOURS."""
    return services.prune_idempotency_records(before=timezone.now() - settings.IDEMPOTENCY_RETENTION)


@shared_task
def clear_expired_sessions() -> None:
    """Delete expired sessions, as `manage.py clearsessions` does."""
    import_module(settings.SESSION_ENGINE).SessionStore.clear_expired()
