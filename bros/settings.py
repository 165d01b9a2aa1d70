"""BROS settings, read from the environment (12-factor) with safe production defaults.

Production needs DATABASE_URL, REDIS_URL, SECRET_KEY and ALLOWED_HOSTS; DEBUG is off unless asked.
`python3 dev.py run` sets development values and embedded services when they are unset.
"""

import ipaddress
from datetime import timedelta
from pathlib import Path

import environ
import xstatic.pkg.leaflet
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env("SECRET_KEY", default="")
if not SECRET_KEY:
    raise ImproperlyConfigured("Set SECRET_KEY (dev.py sets a development one).")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "ninja",
    "channels",
    "core",
    "realtime",
    "deliveries",
    "riders",
    "chat",
]

MIDDLEWARE = [
    "core.log_context.RequestIdMiddleware",
    "core.metrics.CommandMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "bros.urls"
ASGI_APPLICATION = "bros.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "core.context_processors.navigation",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL")}
# Under ASGI every request may run in a different thread: no persistent connections, a pool instead.
DATABASES["default"]["CONN_MAX_AGE"] = 0
if env.bool("DB_POOL", default=True):
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env.int("DB_POOL_MIN", default=2),
        "max_size": env.int("DB_POOL_MAX", default=20),
        "timeout": 10,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env("REDIS_URL", default="")
if not REDIS_URL:
    raise ImproperlyConfigured("Set REDIS_URL (dev.py starts an embedded Redis when unset).")
# Prefix of every Redis key and pub/sub channel of this deployment (tests use their own).
REDIS_PREFIX = env("REDIS_PREFIX", default="bros")

# No CHANNEL_LAYERS: events reach each process over its own Redis pub/sub subscription per stream
# (realtime/hub.py); the channel layer was measured against it and left out (docs/realtime.md §8).

CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_BEAT_SCHEDULE = {
    "sweep-outbox": {
        "task": "realtime.tasks.sweep_outbox",
        "schedule": timedelta(seconds=10),
    },
    "prune-history": {
        "task": "realtime.tasks.prune_history",
        "schedule": timedelta(hours=1),
    },
    "prune-chat": {
        "task": "chat.tasks.prune_messages",
        "schedule": timedelta(hours=6),
    },
    "reconcile-streams": {
        "task": "realtime.tasks.reconcile_streams",
        "schedule": timedelta(minutes=2),
    },
    "dispatch-webhooks": {
        "task": "realtime.tasks.dispatch_webhooks",
        "schedule": timedelta(seconds=2),
    },
    "retry-webhooks": {
        "task": "realtime.tasks.retry_webhooks",
        "schedule": timedelta(seconds=30),
    },
    # Retention (docs/running.md): what would otherwise grow without bound.
    "prune-idempotency-records": {
        "task": "core.tasks.prune_idempotency_records",
        "schedule": timedelta(hours=1),
    },
    "clear-expired-sessions": {
        "task": "core.tasks.clear_expired_sessions",
        "schedule": timedelta(hours=6),
    },
    "prune-position-samples": {
        "task": "riders.tasks.prune_position_samples",
        "schedule": timedelta(hours=1),
    },
    "prune-timeline": {
        "task": "deliveries.tasks.prune_timeline",
        "schedule": timedelta(hours=6),
    },
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env("TIME_ZONE", default="Asia/Seoul")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static", ("leaflet", xstatic.pkg.leaflet.BASE_DIR)]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

EMAIL_CONFIG = env.email("EMAIL_URL", default="consolemail://")
vars().update(EMAIL_CONFIG)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="bros@localhost")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
ADMINS = [("Ops", addr) for addr in env.list("ADMINS", default=[])]

# Structured logs (core/log_context.py): each line names its request or WebSocket connection;
# LOG_FORMAT=json writes one JSON object per line. Error e-mails go to ADMINS, rate-limited.
LOG_FORMAT = env("LOG_FORMAT", default="text")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "core.log_context.ContextFilter"}},
    "formatters": {
        "text": {
            "format": "%(asctime)s %(levelname)s %(name)s [req=%(request_id)s conn=%(connection_id)s] %(message)s"
        },
        "json": {"()": "core.log_context.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["context"],
            "formatter": "json" if LOG_FORMAT == "json" else "text",
        },
        "mail_admins": {
            "class": "core.log_context.RateLimitedAdminEmailHandler",
            "level": "ERROR",
            "filters": ["context"],
            "per_message": env.float("ERROR_EMAIL_INTERVAL", default=600.0),
            "per_hour": env.int("ERROR_EMAILS_PER_HOUR", default=20),
        },
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.request": {
            "handlers": ["console", "mail_admins"],
            "level": "ERROR",
            "propagate": False,
        },
        "realtime": {
            "handlers": ["console", "mail_admins"],
            "level": "INFO",
            "propagate": False,
        },
    },
}

# Domain settings.
# History is kept at least 24 h (protocol §1); pruning keeps a margin on top.
EVENT_RETENTION = timedelta(hours=env.int("EVENT_RETENTION_HOURS", default=25))
# Chat messages live in their own table, kept this many days (unset: forever), whatever the event window.
CHAT_RETENTION_DAYS = env.int("CHAT_RETENTION_DAYS", default=None)
# Retention of what grows without bound (docs/running.md). Timeline entries are the audit trail:
# kept for ever unless TIMELINE_RETENTION_DAYS is set above 0.
IDEMPOTENCY_RETENTION = timedelta(hours=env.int("IDEMPOTENCY_RETENTION_HOURS", default=48))
POSITION_RETENTION = timedelta(days=env.int("POSITION_RETENTION_DAYS", default=7))
TIMELINE_RETENTION_DAYS = env.int("TIMELINE_RETENTION_DAYS", default=0)
if min(IDEMPOTENCY_RETENTION, POSITION_RETENTION) < timedelta(hours=1):
    raise ImproperlyConfigured("IDEMPOTENCY_RETENTION_HOURS and POSITION_RETENTION_DAYS must be at least 1.")
# Delivery urgency thresholds (minutes) for the dispatcher board.
SLA_UNASSIGNED_MINUTES = env.int("SLA_UNASSIGNED_MINUTES", default=5)
SLA_DEFAULT_PROMISE_MINUTES = env.int("SLA_DEFAULT_PROMISE_MINUTES", default=50)
# How far ahead an order may be promised (pre-orders); later times are refused as typos.
ORDER_PROMISE_MAX_DAYS = env.int("ORDER_PROMISE_MAX_DAYS", default=7)
# Call center (docs/call-center.md): a center serves addresses within this distance of its map
# centre (farther needs the agent's explicit confirmation); the same phone ordering from the same
# shop within this many minutes is flagged as a possible duplicate; the order page's ETA is the
# straight-line distance at this speed.
CENTER_SERVICE_RADIUS_KM = env.float("CENTER_SERVICE_RADIUS_KM", default=8.0)
ORDER_DUPLICATE_MINUTES = env.int("ORDER_DUPLICATE_MINUTES", default=10)
RIDER_TYPICAL_SPEED_KMH = env.float("RIDER_TYPICAL_SPEED_KMH", default=20.0)

# Real-time protocol (protocol.md §3).
REALTIME_HEADS_INTERVAL = env.float("REALTIME_HEADS_INTERVAL", default=5.0)  # hub self-check vs database heads
REALTIME_PING_INTERVAL = env.float("REALTIME_PING_INTERVAL", default=20.0)
REALTIME_IDLE_TIMEOUT = env.float("REALTIME_IDLE_TIMEOUT", default=45.0)
# The ASGI server's cyclic garbage collector (bros/asgi.py `tune_garbage_collector`): CPython's
# thresholds, except the oldest generation's, 10 -> 1000, so the full collection that walks every
# open socket's objects runs rarely (docs/realtime.md, "Garbage collection").
SERVER_GC_THRESHOLDS = env.list("SERVER_GC_THRESHOLDS", cast=int, default=[700, 10, 1000])
# A ping unanswered this long means the client no longer reads what we send (closed with 4001).
REALTIME_PONG_TIMEOUT = env.float("REALTIME_PONG_TIMEOUT", default=REALTIME_IDLE_TIMEOUT)
# A process that dies leaves presence when its key expires (protocol: within 60 s).
REALTIME_PRESENCE_TTL = env.float("REALTIME_PRESENCE_TTL", default=45.0)
REALTIME_PRESENCE_HEARTBEAT = env.float("REALTIME_PRESENCE_HEARTBEAT", default=15.0)
REALTIME_QUEUE_LIMIT = env.int("REALTIME_QUEUE_LIMIT", default=2000)  # frames queued per socket before 4001
REALTIME_MAX_FRAME = 64 * 1024
REALTIME_TEST_PAGE = env.bool("REALTIME_TEST_PAGE", default=False)  # /dev/realtime-test/ outside DEBUG
REALTIME_PUBLISH_RATE = env.float("REALTIME_PUBLISH_RATE", default=5.0)  # publishes per second per user or token
REALTIME_PUBLISH_BURST = env.int("REALTIME_PUBLISH_BURST", default=20)
# HTTP commands (orders, cancels, delivery commands) per user and per token: generous for people,
# a brake on a runaway integration.
API_COMMAND_RATE = env.float("API_COMMAND_RATE", default=10.0)  # commands per second
API_COMMAND_BURST = env.int("API_COMMAND_BURST", default=100)
# Test only (the chaos suite): drop, duplicate, delay publishes or crash before them (realtime/faults.py).
REALTIME_BUS_FAULTS = env("REALTIME_BUS_FAULTS", default="")

# Outgoing webhooks (protocol.md §7): per-request timeout, attempts before giving up, back-off.
WEBHOOK_TIMEOUT = env.float("WEBHOOK_TIMEOUT", default=5.0)  # seconds, connect and each read
WEBHOOK_MAX_ATTEMPTS = env.int("WEBHOOK_MAX_ATTEMPTS", default=10)
WEBHOOK_RETRY_BASE = env.float("WEBHOOK_RETRY_BASE", default=30.0)  # seconds before the 2nd attempt, doubling
WEBHOOK_RETRY_MAX = env.float("WEBHOOK_RETRY_MAX", default=3600.0)  # the longest wait between attempts
# Delivered and given-up deliveries leave the log after this; pending ones stay.
WEBHOOK_LOG_RETENTION = timedelta(days=env.int("WEBHOOK_LOG_RETENTION_DAYS", default=7))

# Map tiles of every map. Unset: OpenStreetMap's standard tile layer with its attribution (fine for
# a small deployment; a busy one needs its own tile provider, as the OSM tile usage policy asks).
# Any tile URL template when set; set but empty: no tiles, markers on a blank map, which works with
# no network at all (the tests run so). HTML is allowed in the attribution (links to the sources).
OSM_TILE_URL = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
OSM_ATTRIBUTION = '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors'
MAP_TILE_URL = env("MAP_TILE_URL", default=OSM_TILE_URL)
MAP_TILE_ATTRIBUTION = env("MAP_TILE_ATTRIBUTION", default=OSM_ATTRIBUTION if MAP_TILE_URL == OSM_TILE_URL else "")
RIDER_GPS_STALE_SECONDS = env.float("RIDER_GPS_STALE_SECONDS", default=45.0)  # greyed "last seen" after this

# Ops (docs/running.md): who may scrape /metrics (a Bearer token, or client addresses/networks).
METRICS_TOKEN = env("METRICS_TOKEN", default="")
OPS_REFRESH_SECONDS = env.int("OPS_REFRESH_SECONDS", default=5)  # how often /ops/ polls its figures
try:
    METRICS_ALLOWED_IPS = [
        ipaddress.ip_network(net, strict=False) for net in env.list("METRICS_ALLOWED_IPS", default=[])
    ]
except ValueError as exc:
    raise ImproperlyConfigured(f"METRICS_ALLOWED_IPS: {exc}") from None
