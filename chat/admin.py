"""Admin for chat: browse and search messages by room, author and time (read-only: messages are records)."""

from django.contrib import admin

from chat.models import ChatMessage
from core.admin import ReadOnlyAdmin


class RoomKindFilter(admin.SimpleListFilter):
    title = "room kind"
    parameter_name = "kind"

    def lookups(self, request, model_admin):
        return [("chat", "Center rooms"), ("dm", "Direct conversations")]

    def queryset(self, request, queryset):
        if self.value() in ("chat", "dm"):
            return queryset.filter(stream__startswith=f"{self.value()}:")
        return queryset


@admin.register(ChatMessage)
class ChatMessageAdmin(ReadOnlyAdmin):
    list_display = ["sent_at", "stream", "author_name", "author_role", "short_text"]
    list_filter = [RoomKindFilter, "author_role"]
    search_fields = ["stream", "author_name", "author__username", "text"]
    search_help_text = "Room (chat:gangnam, dm:4-9), author name or username, or words of the message."
    date_hierarchy = "sent_at"
    ordering = ["-sent_at"]
    show_full_result_count = False
    list_select_related = ["author"]
    fields = ["stream", "seq", "sent_at", "author", "author_name", "author_role", "text", "client_msg_id", "uuid"]
    readonly_fields = fields

    @admin.display(description="Text")
    def short_text(self, message: ChatMessage) -> str:
        return message.text if len(message.text) <= 80 else message.text[:79] + "…"
