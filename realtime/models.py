"""The outbox: streams and their event history."""

import secrets

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
