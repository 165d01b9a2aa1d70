"""The admin for streams, events, idempotency records and API tokens."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import quote
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from core.models import ApiToken, IdempotencyRecord, hash_token
from deliveries.services import create_order
from realtime.admin import ApiTokenForm
from realtime.models import Event, Stream, Webhook
from realtime.webhooks import dispatch_new_events

MODELS = sorted(
    (model for model in admin.site._registry if model._meta.app_label == "realtime"),
    key=lambda model: model._meta.label,
)
MODEL_IDS = [model._meta.label for model in MODELS]
RAW_TOKEN = re.compile(r"bros_[A-Za-z0-9_-]{43}")


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.fixture(autouse=True)
def _unhashed_static(settings):
    """Render admin pages without a collected static manifest (tests run with DEBUG off)."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture
def superuser(client, demo):
    client.force_login(demo.user("admin"))
    return client


def add_token(client, **fields):
    data = {"name": "POS integration", "commands": ["orders.create"], "streams": "orders:gangnam", **fields}
    return client.post(admin_url(ApiToken, "add"), data)


def created_raw_token(response) -> str:
    assert response.status_code == 200
    (raw,) = set(RAW_TOKEN.findall(response.content.decode()))
    return raw


def form_errors(response) -> dict:
    return response.context["adminform"].form.errors


@pytest.fixture
def one_of_each(superuser, demo):
    """At least one row of every realtime model: an order's events, a token, an idempotency record,
    a webhook and its delivery."""
    Webhook.objects.create(name="hook", url="http://127.0.0.1:9/", secret="s" * 16, event_types=["order.created"])
    create_order(
        actor=None,
        shop_id=demo.shop().pk,
        customer_name="Kim Test",
        customer_phone="010-1234-5678",
        address="Teheran-ro 1, Seoul",
        items=[{"name": "x", "qty": 1}],
    )
    created_raw_token(add_token(superuser))
    # No service writes these yet (the HTTP API will); a record is plain data, not domain state.
    IdempotencyRecord.objects.create(owner="token:1", key="k-1", fingerprint="f" * 64, status_code=201, body={"id": 1})
    dispatch_new_events()  # a delivery of the order's event (not sent: no task runs here)


@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
def test_admin_changelist_loads(superuser, one_of_each, model):
    """Every realtime change list renders for the superuser."""
    assert superuser.get(admin_url(model, "changelist")).status_code == 200


@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
def test_admin_change_page_loads(superuser, one_of_each, model):
    """Every realtime change (or view-only) page renders, including streams named "ns:room"."""
    obj = model._default_manager.first()
    assert obj is not None
    assert superuser.get(admin_url(model, "change", quote(obj.pk))).status_code == 200


@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
def test_admin_add_page_only_for_tokens_and_webhooks(superuser, model):
    """Only API tokens and webhooks can be added; streams, events, records and deliveries are the system's."""
    response = superuser.get(admin_url(model, "add"))
    assert response.status_code == (200 if model in (ApiToken, Webhook) else 403)


def test_admin_non_staff_redirected_to_login(client, demo):
    """A dispatcher without staff status cannot reach the token list."""
    client.force_login(demo.user("dispatch-gangnam"))
    response = client.get(admin_url(ApiToken, "changelist"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


@pytest.mark.parametrize("query", [{"published": "no"}, {"published": "yes"}, {"name": "order.created"}])
def test_event_changelist_filters(superuser, one_of_each, query):
    """Events filter by name and by whether they were published."""
    response = superuser.get(admin_url(Event, "changelist"), query)
    found = list(response.context["cl"].result_list)
    expected = Event.objects.filter(
        **({"name": query["name"]} if "name" in query else {"published_at__isnull": query["published"] == "no"})
    )
    assert {event.pk for event in found} == set(expected.values_list("pk", flat=True))


def test_event_change_page_shows_data(superuser, one_of_each):
    """An event's page shows its JSON data read-only."""
    event = Event.objects.get(name="order.created")
    response = superuser.get(admin_url(Event, "change", event.pk))
    assert b"Kim Test" in response.content
    assert b'name="_save"' not in response.content


def test_apitoken_add_shows_raw_token_once(superuser, demo):
    """Adding a token shows the raw token once and stores only its sha256 digest."""
    response = add_token(
        superuser,
        commands=["orders.create", "positions.write"],
        streams="deliveries:gangnam, chat:*\n*",
    )
    raw = created_raw_token(response)
    assert "no-store" in response["Cache-Control"]
    token = ApiToken.objects.get(name="POS integration")
    assert token.digest == hash_token(raw)
    assert token.hint == raw[:12]
    assert (token.commands, token.streams) == (
        ["orders.create", "positions.write"],
        ["deliveries:gangnam", "chat:*", "*"],
    )
    assert token.created_by == demo.user("admin")
    assert raw not in str(list(ApiToken.objects.values()))
    assert raw not in str(dict(superuser.session))
    change_page = superuser.get(admin_url(ApiToken, "change", token.pk))
    assert raw.encode() not in change_page.content
    assert token.hint.encode() in change_page.content
    changelist = superuser.get(admin_url(ApiToken, "changelist"))
    assert raw.encode() not in changelist.content


def test_apitoken_add_refuses_unknown_command(superuser):
    """A command outside the known set is a form error and creates nothing."""
    response = add_token(superuser, commands=["orders.create", "orders.destroy"])
    assert "orders.destroy" in form_errors(response)["commands"][0]
    assert not ApiToken.objects.exists()


@pytest.mark.parametrize("streams", ["deliveries", "nope:gangnam", "deliveries:Gang nam", "user:abc", "nope:*", "**"])
def test_apitoken_add_refuses_malformed_stream(superuser, streams):
    """A stream pattern that is not ns:room, ns:* or * is a form error naming it."""
    response = add_token(superuser, streams=f"orders:gangnam, {streams}")
    errors = form_errors(response)["streams"]
    assert len(errors) == 1
    assert f"“{streams}” is not a stream" in errors[0]
    assert not ApiToken.objects.exists()


def test_apitoken_edit_changes_scope_not_secret(superuser):
    """Editing a token's scope keeps its digest: the raw token stays valid and unseen."""
    raw = created_raw_token(add_token(superuser))
    token = ApiToken.objects.get()
    response = superuser.post(
        admin_url(ApiToken, "change", token.pk),
        {"name": token.name, "commands": ["orders.cancel"], "streams": "orders:*"},
    )
    assert response.status_code == 302
    token.refresh_from_db()
    assert (token.commands, token.streams, token.digest) == (["orders.cancel"], ["orders:*"], hash_token(raw))


def test_apitoken_revoke_action(superuser):
    """Revoking sets revoked_at on active tokens and keeps the first revocation time."""
    created_raw_token(add_token(superuser, name="first"))
    created_raw_token(add_token(superuser, name="second"))
    first, second = ApiToken.objects.order_by("name")
    earlier = timezone.now() - timedelta(days=1)
    ApiToken.objects.filter(pk=second.pk).update(revoked_at=earlier)
    response = superuser.post(
        admin_url(ApiToken, "changelist"),
        {"action": "revoke_selected", ACTION_CHECKBOX_NAME: [first.pk, second.pk]},
        follow=True,
    )
    assert [str(m) for m in get_messages(response.wsgi_request)] == ["Revoked 1 token(s)."]
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.revoked_at is not None
    assert second.revoked_at == earlier
    active = superuser.get(admin_url(ApiToken, "changelist"), {"active": "yes"})
    assert list(active.context["cl"].result_list) == []


def test_stream_is_read_only(superuser, one_of_each):
    """A stream's counter cannot be edited or deleted from admin."""
    stream = Stream.objects.get(name="orders:gangnam")
    url = admin_url(Stream, "change", quote(stream.pk))
    assert superuser.post(url, {"name": stream.name, "epoch": "x", "head": 0}).status_code == 403
    assert superuser.get(admin_url(Stream, "delete", quote(stream.pk))).status_code == 403
    assert Stream.objects.get(name="orders:gangnam").head == stream.head


def test_apitoken_edit_keeps_usage_written_meanwhile(superuser, monkeypatch):
    """Saving a token's scope does not overwrite last_used_at or a revocation written during the save."""
    created_raw_token(add_token(superuser))
    token = ApiToken.objects.get()
    used = timezone.now() - timedelta(minutes=1)
    clean = ApiTokenForm.clean

    def clean_while_token_is_used(form):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=used, revoked_at=used)
        return clean(form)

    monkeypatch.setattr(ApiTokenForm, "clean", clean_while_token_is_used)
    response = superuser.post(
        admin_url(ApiToken, "change", token.pk), {"name": token.name, "commands": [], "streams": "*"}
    )
    assert response.status_code == 302, form_errors(response)
    token.refresh_from_db()
    assert (token.streams, token.last_used_at, token.revoked_at) == (["*"], used, used)
