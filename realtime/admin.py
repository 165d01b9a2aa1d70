"""Admin for the outbox (streams, events), idempotency records, API tokens and webhooks.

Streams, events and idempotency records are the system's memory and are only browsed here.
API tokens are configuration: the admin creates them (showing the raw token once, storing
only its digest), edits their scope and revokes them. Webhooks are configuration too (their
secret is never shown back); their delivery log is browse-only, with a "send again" action.
"""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html

from core.admin import ReadOnlyAdmin, refusal_message
from core.models import ApiToken, IdempotencyRecord
from realtime import registry, tasks, webhooks
from realtime.events import EVENT_SCHEMAS
from realtime.models import Event, Stream, Webhook, WebhookDelivery
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


MIN_SECRET_LENGTH = 16


class WebhookForm(forms.ModelForm):
    """The secret is typed once and never rendered back: leave it empty on change to keep it."""

    url = forms.URLField(
        max_length=500,
        assume_scheme="https",
        label="URL",
        help_text="http:// or https://. Redirects are not followed.",
    )
    secret = forms.CharField(
        required=False,
        strip=False,
        min_length=MIN_SECRET_LENGTH,
        max_length=200,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=f"At least {MIN_SECRET_LENGTH} characters, shared with the receiver to check signatures.",
    )
    event_types = forms.MultipleChoiceField(
        choices=[(name, name) for name in sorted(EVENT_SCHEMAS)],
        widget=forms.CheckboxSelectMultiple,
        help_text="The events sent to this URL.",
    )

    class Meta:
        model = Webhook
        fields = ["name", "url", "secret", "event_types", "centers", "active"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["secret"].label = "New secret"
            self.fields["secret"].help_text = "Leave empty to keep the current secret; type one to replace it."
        else:
            self.fields["secret"].required = True
        self.initial.pop("secret", None)

    def clean_secret(self) -> str:
        # An empty field on change keeps the stored secret, which the form never saw.
        return self.cleaned_data["secret"] or self.instance.secret


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    form = WebhookForm
    list_display = ["name", "url", "event_list", "center_list", "active", "created_at"]
    list_filter = ["active"]
    search_fields = ["name", "url"]
    filter_horizontal = ["centers"]
    readonly_fields = ["secret_state", "created_at"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["name", "url", "secret", "event_types", "centers", "active"]
        return ["name", "url", "secret_state", "secret", "event_types", "centers", "active", "created_at"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("centers")

    @admin.display(description="Secret")
    def secret_state(self, webhook: Webhook) -> str:
        return f"Set ({len(webhook.secret)} characters; not shown)."

    @admin.display(description="Events")
    def event_list(self, webhook: Webhook) -> str:
        return ", ".join(webhook.event_types) or "—"

    @admin.display(description="Centers")
    def center_list(self, webhook: Webhook) -> str:
        return ", ".join(center.code for center in webhook.centers.all()) or "all"


def queue_sends(delivery_ids: list[int]) -> None:
    """Queue one send task per delivery once the transaction that made them due commits."""
    transaction.on_commit(lambda: [tasks.send_webhook.delay(pk) for pk in delivery_ids], robust=True)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "webhook",
        "event",
        "stream_seq",
        "status",
        "attempts",
        "last_status_code",
        "short_error",
        "next_attempt_at",
        "delivery_id",
    ]
    list_filter = ["status", "webhook"]
    list_select_related = ["webhook"]
    search_fields = ["delivery_id", "stream", "event"]
    search_help_text = "Delivery id, stream (deliveries:gangnam) or event name."
    ordering = ["-id"]
    show_full_result_count = False
    actions = ["send_again"]
    fields = [
        "delivery_id",
        "webhook",
        "event",
        "stream",
        "seq",
        "status",
        "attempts",
        "max_attempts",
        "last_status_code",
        "last_error",
        "last_attempt_at",
        "next_attempt_at",
        "delivered_at",
        "created_at",
        "body_json",
    ]
    readonly_fields = fields

    @admin.display(description="Stream", ordering="stream")
    def stream_seq(self, delivery: WebhookDelivery) -> str:
        return f"{delivery.stream}#{delivery.seq}"

    @admin.display(description="Last error")
    def short_error(self, delivery: WebhookDelivery) -> str:
        text = delivery.last_error
        return text if len(text) <= 80 else text[:79] + "…"

    @admin.display(description="Body")
    def body_json(self, delivery: WebhookDelivery) -> str:
        return format_html("<pre>{}</pre>", json.dumps(json.loads(delivery.body), indent=2, ensure_ascii=False))

    def has_resend_permission(self, request) -> bool:
        return webhooks.can_resend(request.user)

    @admin.action(description="Send again", permissions=["resend"])
    def send_again(self, request, queryset):
        selected = list(queryset.values_list("pk", flat=True))
        try:
            ids = webhooks.resend_deliveries(actor=request.user, delivery_ids=selected)
        except PermissionDenied as exc:
            self.message_user(request, refusal_message(exc), messages.ERROR)
            return
        queue_sends(ids)
        if ids:
            self.message_user(request, f"Sending {len(ids)} deliveries again.", messages.SUCCESS)
        if skipped := len(selected) - len(ids):
            self.message_user(
                request, f"Left {skipped} alone: their webhook is inactive (activate it first).", messages.WARNING
            )
