"""Centers, staff roles, API tokens and idempotency records: what every app builds on."""

import hashlib
import secrets

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

ROOM_CODE_VALIDATOR = RegexValidator(
    r"^[a-z0-9][a-z0-9-]{0,49}$",
    "Lower-case letters, digits and dashes, starting with a letter or digit.",
)


class Center(models.Model):
    """A regional delivery center: the unit of dispatching and of stream rooms."""

    code = models.CharField(max_length=50, unique=True, validators=[ROOM_CODE_VALIDATOR])
    name = models.CharField(max_length=100)
    lat = models.FloatField(help_text="Map centre latitude")
    lng = models.FloatField(help_text="Map centre longitude")
    version = models.PositiveIntegerField(default=1)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.name


class StaffProfile(models.Model):
    """A user's role and the centers they work for (HQ works for all)."""

    class Role(models.TextChoices):
        HQ = "hq", "HQ admin"
        DISPATCHER = "dispatcher", "Dispatcher"
        CALLCENTER = "callcenter", "Call-center staff"
        RIDER = "rider", "Rider"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="staff")
    role = models.CharField(max_length=20, choices=Role.choices)
    centers = models.ManyToManyField(Center, blank=True, related_name="staff")

    def __str__(self) -> str:
        return f"{self.user} ({self.get_role_display()})"


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiToken(models.Model):
    """A Bearer token for integrations, stored hashed and scoped to commands and streams."""

    PREFIX = "bros_"

    name = models.CharField(max_length=100, unique=True)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    hint = models.CharField(
        max_length=12,
        editable=False,
        help_text="First characters, to recognise a token",
    )
    commands = models.JSONField(
        default=list,
        blank=True,
        help_text='Commands it may run, e.g. ["orders.create", "orders.cancel"]',
    )
    streams = models.JSONField(
        default=list,
        blank=True,
        help_text='Streams it may read and publish to: "namespace:room", "namespace:*" or "*"',
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def generate(cls) -> tuple[str, str]:
        """Return a new raw token and its digest; only the digest is stored."""
        raw = cls.PREFIX + secrets.token_urlsafe(32)
        return raw, hash_token(raw)


class IdempotencyRecord(models.Model):
    """The first result of a command sent with an Idempotency-Key, returned again on retries."""

    owner = models.CharField(max_length=60, help_text='"user:<id>" or "token:<id>"')
    key = models.CharField(max_length=200)
    fingerprint = models.CharField(max_length=64, help_text="Hash of method, path and body")
    status_code = models.PositiveSmallIntegerField()
    body = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "key"], name="idempotency_unique_key")]

    def __str__(self) -> str:
        return f"{self.owner} {self.key}"
