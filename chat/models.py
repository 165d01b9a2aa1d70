"""Chat messages and how far each user has read, kept in PostgreSQL for as long as CHAT_RETENTION_DAYS says.

A message is stored together with the event that carries it (`chat.services.post_message`), so the
history survives restarts, Redis outages and the event window (EVENT_RETENTION_HOURS) alike.
"""

from django.conf import settings
from django.db import models


class ChatMessage(models.Model):
    """One message of a center room (`chat:<center>`) or a direct conversation (`dm:<a>-<b>`)."""

    uuid = models.CharField(max_length=32, unique=True, help_text="The message's id in events.")
    stream = models.CharField(max_length=120, help_text="chat:<center> or dm:<lower user id>-<higher user id>")
    seq = models.BigIntegerField(help_text="The seq of its event on the stream.")
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="chat_messages"
    )
    author_name = models.CharField(max_length=150)
    author_role = models.CharField(max_length=20, blank=True)
    text = models.TextField(max_length=2000)
    client_msg_id = models.CharField(max_length=100, null=True, blank=True)
    sent_at = models.DateTimeField()

    class Meta:
        ordering = ["-sent_at"]
        constraints = [
            models.UniqueConstraint(fields=["stream", "seq"], name="chat_message_unique_seq"),
            # A retry with the same client_msg_id finds the first send instead of a second message.
            models.UniqueConstraint(
                fields=["author", "stream", "client_msg_id"],
                condition=models.Q(client_msg_id__isnull=False),
                name="chat_message_idempotent_client_id",
            ),
        ]
        indexes = [models.Index(fields=["sent_at"], name="chat_message_sent_at")]

    def __str__(self) -> str:
        return f"{self.stream}#{self.seq} {self.author_name}: {self.text[:40]}"


class ChatRead(models.Model):
    """The last seq of a stream a user has read: their unread count is what came after it from others."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_reads")
    stream = models.CharField(max_length=120)
    last_read_seq = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "stream"], name="chat_read_unique")]

    def __str__(self) -> str:
        return f"{self.user_id} read {self.stream} to {self.last_read_seq}"
