"""Periodic chat tasks (Celery beat)."""

from celery import shared_task
from django.conf import settings

from chat import services


@shared_task
def prune_messages() -> int:
    """Drop chat messages past CHAT_RETENTION_DAYS (unset: chat is kept; the event window is separate)."""
    return services.prune_messages(older_than_days=settings.CHAT_RETENTION_DAYS)
