"""The outbox (streams and their event history) and the outgoing webhooks fed from it."""

import secrets
import uuid
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
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


def validate_webhook_url(url: str) -> None:
    """Only http and https, and no credentials in the URL (the signature authenticates)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValidationError("Use an http:// or https:// URL.", code="scheme")
    if parts.username is not None or parts.password is not None:
        raise ValidationError("Leave user and password out of the URL: receivers check the signature.", code="auth")


class Webhook(models.Model):
    """An outgoing webhook: matching outbox events are POSTed to `url`, signed with `secret`.

    The secret must be stored as typed (the signature is an HMAC keyed with it); the admin shows
    only its first characters once it is saved.
    """

    name = models.CharField(max_length=100, unique=True)
    url = models.URLField(
        max_length=500,
        validators=[validate_webhook_url],
        help_text="http:// or https://. Redirects are not followed.",
    )
    secret = models.CharField(max_length=200)
    event_types = models.JSONField(default=list, help_text="Event names to send, e.g. order.cancelled")
    centers = models.ManyToManyField(
        "core.Center", blank=True, related_name="+", help_text="Only these centers' events; none: every center"
    )
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class WebhookCursor(models.Model):
    """How far each stream's events have been turned into webhook deliveries (by seq).

    A cursor per stream, not one over event ids: seqs of a stream commit in order (outbox.emit),
    ids do not, so an id cursor could step over an event whose transaction commits late. A table
    of its own, not a column of Stream: commands hold their Stream rows locked until commit.
    """

    stream = models.CharField(max_length=120, primary_key=True)
    seq = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.stream}:{self.seq}"


class WebhookDelivery(models.Model):
    """One event for one webhook: the exact body, and how sending it went (at-least-once)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed (gave up)"

    delivery_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event_id = models.BigIntegerField(help_text="The outbox event (its history is pruned; the body is kept here)")
    stream = models.CharField(max_length=120)
    seq = models.BigIntegerField()
    event = models.CharField(max_length=60)
    body = models.TextField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField()
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(fields=["webhook", "event_id"], name="webhook_delivery_once_per_event"),
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=models.Q(status="pending"),
                name="webhook_delivery_due",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} → {self.webhook_id} ({self.delivery_id})"
