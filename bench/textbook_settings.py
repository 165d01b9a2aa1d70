"""Settings for the textbook Channels server of bench/textbook.py: BROS settings, with the
classic `channels_redis.core.RedisChannelLayer` (default capacity 100, expiry 60 s) as the layer."""

from bros.settings import *  # noqa: F403
from bros.settings import REDIS_PREFIX, REDIS_URL

ASGI_APPLICATION = "bench.textbook.application"
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": f"{REDIS_PREFIX}:textbook"},
    }
}
