"""The outbox (streams and their event history), API tokens and idempotency records."""

import hashlib
import secrets

from django.conf import settings
from django.db import models


def new_epoch() -> str:
    return secrets.token_hex(4)


class Stream(models.Model):
    """A logged stream's counter row: `head` is the last assigned seq.

    Writers bump `head` with an upsert that locks this row until their transaction commits, so seqs
    are gapless and the next writer can only take seq k+1 after seq k is committed (protocol §1).
    """

    name = models.CharField(max_length=120, primary_key=True)
    epoch = models.CharField(max_length=16, default=new_epoch)
    head = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name}@{self.epoch}:{self.head}"


class Event(models.Model):
    """One event of a logged stream, written in the transaction of the change it describes."""

    stream = models.CharField(max_length=120)
    seq = models.BigIntegerField()
    name = models.CharField(max_length=60)
    data = models.JSONField()
    ts = models.DateTimeField()
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["stream", "seq"], name="event_unique_seq_per_stream")]
        indexes = [
            models.Index(fields=["ts"], name="event_ts"),
            models.Index(
                fields=["id"],
                condition=models.Q(published_at__isnull=True),
                name="event_unpublished",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.stream}#{self.seq} {self.name}"


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
