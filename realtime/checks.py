"""System checks for the real-time setup."""

from django.conf import settings
from django.core import checks


@checks.register(checks.Tags.compatibility)
def check_channel_layer_is_shared(app_configs, **kwargs):
    """An in-memory channel layer cannot connect processes: refuse it outside DEBUG."""
    backend = settings.CHANNEL_LAYERS.get("default", {}).get("BACKEND", "")
    if not settings.DEBUG and backend.endswith("InMemoryChannelLayer"):
        return [
            checks.Error(
                "The in-memory channel layer only works inside one process.",
                hint="Use channels_redis (set REDIS_URL) when DEBUG is off.",
                id="realtime.E001",
            )
        ]
    return []
