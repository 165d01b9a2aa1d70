"""Admin for the outbox (streams, events), idempotency records and API tokens.

Streams, events and idempotency records are the system's memory and are only browsed here.
API tokens are configuration: the admin creates them (showing the raw token once, storing
only its digest), edits their scope and revokes them.
"""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html

from core.admin import ReadOnlyAdmin
from core.models import ApiToken, IdempotencyRecord
from realtime import registry
from realtime.events import EVENT_SCHEMAS
from realtime.models import Event, Stream
from realtime.streams import UnknownStream, parse_stream

HINT_LENGTH = 12

# The commands a token can be allowed to run, as the HTTP API checks them.
TOKEN_COMMANDS = [
    ("orders.create", "orders.create — take orders"),
    ("orders.cancel", "orders.cancel — cancel orders"),
    ("deliveries.assign", "deliveries.assign — assign riders"),
    ("deliveries.unassign", "deliveries.unassign — unassign riders"),
    ("deliveries.pickup", "deliveries.pickup — mark picked up"),
    ("deliveries.deliver", "deliveries.deliver — mark delivered"),
    ("positions.write", "positions.write — send rider positions"),
    ("publish", "publish — publish to streams"),
]


def clean_stream_pattern(pattern: str) -> str:
    """Return `pattern` if it is "*", "namespace:*" or a concrete stream name; else raise."""
    if pattern == "*":
        return pattern
    namespace, _, room = pattern.partition(":")
    if room == "*" and namespace in registry.namespaces():
        return pattern
    try:
        return str(parse_stream(pattern))
    except UnknownStream:
        raise forms.ValidationError(
            f"“{pattern}” is not a stream: use namespace:room, namespace:* or *, "
            f"with a namespace from {', '.join(registry.namespaces())}.",
            code="invalid_stream",
        ) from None


class StreamPatternsField(forms.CharField):
    """Stream patterns typed one per line or comma-separated, cleaned into a list."""

    widget = forms.Textarea(attrs={"rows": 3, "cols": 40})

    def prepare_value(self, value):
        if isinstance(value, list):
            return "\n".join(str(item) for item in value)
        return value

    def to_python(self, value) -> list[str]:
        text = super().to_python(value)
        patterns = [part.strip() for part in text.replace(",", "\n").splitlines()]
        return list(dict.fromkeys(p for p in patterns if p))

    def validate(self, value) -> None:
        if self.required and not value:
            raise forms.ValidationError(self.error_messages["required"], code="required")
        errors = []
        for pattern in value:
            try:
                clean_stream_pattern(pattern)
            except forms.ValidationError as exc:
                errors.append(exc)
        if errors:
            raise forms.ValidationError(errors)


SCOPE_FIELDS = ["name", "commands", "streams"]


class ApiTokenForm(forms.ModelForm):
    commands = forms.MultipleChoiceField(
        choices=TOKEN_COMMANDS,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="The commands this token may run; none means read-only.",
    )
    streams = StreamPatternsField(required=False)

    class Meta:
        model = ApiToken
        fields = SCOPE_FIELDS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Built here, not at import: the admin is imported before the apps register their streams.
        self.fields["streams"].help_text = (
            "One per line or comma-separated: a stream (deliveries:gangnam), a whole namespace "
            f"(chat:*) or * for everything. Namespaces: {', '.join(registry.namespaces())}."
        )


class ActiveTokenFilter(admin.SimpleListFilter):
    title = "active"
    parameter_name = "active"

    def lookups(self, request, model_admin):
        return [("yes", "Active"), ("no", "Revoked")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "no":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    form = ApiTokenForm
    list_display = ["name", "hint", "command_list", "stream_list", "created_at", "last_used_at", "revoked_at", "active"]
    list_filter = [ActiveTokenFilter]
    search_fields = ["name", "hint"]
    actions = ["revoke_selected"]
    readonly_fields = ["hint", "digest", "created_by", "created_at", "last_used_at", "revoked_at"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return list(SCOPE_FIELDS)
        return ["name", "hint", "commands", "streams", "created_by", "created_at", "last_used_at", "revoked_at"]

    @admin.display(description="Commands")
    def command_list(self, token: ApiToken) -> str:
        return ", ".join(token.commands) or "—"

    @admin.display(description="Streams")
    def stream_list(self, token: ApiToken) -> str:
        return ", ".join(token.streams) or "—"

    @admin.display(description="Active", boolean=True, ordering="revoked_at")
    def active(self, token: ApiToken) -> bool:
        return token.revoked_at is None

    def save_model(self, request, obj: ApiToken, form, change: bool) -> None:
        if not change:
            raw, digest = ApiToken.generate()
            obj.digest, obj.hint, obj.created_by = digest, raw[:HINT_LENGTH], request.user
            # Only this request sees the raw token: response_add shows it and it is never stored.
            obj._raw_token = raw
            obj.save()
        else:
            # The API writes last_used_at and another admin may revoke meanwhile: save only the form's fields.
            obj.save(update_fields=SCOPE_FIELDS)

    def response_add(self, request, obj: ApiToken, post_url_continue=None):
        """Show the new raw token on its own page, once; never put it in a session or cookie."""
        context = {
            **self.admin_site.each_context(request),
            "title": "API token created",
            "opts": self.opts,
            "token": obj,
            "raw_token": obj._raw_token,
        }
        response = TemplateResponse(request, "admin/realtime/apitoken/created.html", context)
        add_never_cache_headers(response)
        return response

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke_selected(self, request, queryset):
        # Tokens are configuration, not domain state: a direct update is the whole change.
        revoked = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {revoked} token(s).", messages.SUCCESS)


@admin.register(Stream)
class StreamAdmin(ReadOnlyAdmin):
    list_display = ["name", "epoch", "head"]
    search_fields = ["name"]
    fields = ["name", "epoch", "head"]


class EventNameFilter(admin.SimpleListFilter):
    """The event names of the protocol, without scanning the events table for distinct names."""

    title = "name"
    parameter_name = "name"

    def lookups(self, request, model_admin):
        return [(name, name) for name in sorted(EVENT_SCHEMAS)]

    def queryset(self, request, queryset):
        return queryset.filter(name=self.value()) if self.value() else queryset


class PublishedFilter(admin.SimpleListFilter):
    title = "published"
    parameter_name = "published"

    def lookups(self, request, model_admin):
        return [("yes", "Published"), ("no", "Waiting to publish")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(published_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(published_at__isnull=True)
        return queryset


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ["stream", "seq", "name", "ts", "published_at"]
    list_filter = [EventNameFilter, PublishedFilter]
    search_fields = ["stream"]
    search_help_text = "Stream name, e.g. deliveries:gangnam."
    ordering = ["-id"]
    show_full_result_count = False
    fields = ["stream", "seq", "name", "ts", "published_at", "data_json"]
    readonly_fields = fields

    @admin.display(description="Data")
    def data_json(self, event: Event) -> str:
        return format_html("<pre>{}</pre>", json.dumps(event.data, indent=2, ensure_ascii=False))


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "owner", "key", "status_code"]
    search_fields = ["owner", "key"]
    date_hierarchy = "created_at"
    show_full_result_count = False
    fields = ["owner", "key", "fingerprint", "status_code", "created_at", "body_json"]
    readonly_fields = fields

    @admin.display(description="Body")
    def body_json(self, record: IdempotencyRecord) -> str:
        return format_html("<pre>{}</pre>", json.dumps(record.body, indent=2, ensure_ascii=False))
