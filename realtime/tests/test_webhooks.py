"""Outgoing webhooks: signed POSTs of outbox events to a receiver, retried with back-off, logged."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.messages import get_messages
from django.core.exceptions import PermissionDenied
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from bros.celery import app as celery_app
from deliveries.services import cancel_order
from realtime import tasks, webhooks
from realtime.models import Webhook, WebhookDelivery
from tests.support import take_order

SECRET = "whsec-test-0123456789abcdef"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A tiny HTTP receiver on 127.0.0.1: records each POST and answers the next queued status."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    hold: threading.Event | None = None

    def json_bodies(self) -> list[dict]:
        return [json.loads(request.body) for request in self.requests]


@pytest.fixture
def receiver():
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.requests.append(Received(self.path, dict(self.headers.items()), body))
            if state.hold is not None:
                state.hold.wait(10)
            status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            for name, value in state.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}/hooks/bros?source=test"
    yield state
    if state.hold is not None:
        state.hold.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def eager_celery():
    """Tasks queued by tasks run at once in this process, as a worker would run them."""
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous


def make_webhook(url: str, *, events=("order.created",), centers=(), active=True, secret=SECRET) -> Webhook:
    webhook = Webhook.objects.create(
        name=f"hook-{url[-12:]}", url=url, secret=secret, event_types=list(events), active=active
    )
    webhook.centers.set(centers)
    return webhook


def verify(secret: str, headers: dict[str, str], body: bytes, *, tolerance: int = 300) -> bool:
    """The receiver's check, as protocol.md §7 shows it."""
    timestamp = headers["X-Bros-Timestamp"]
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(timestamp)) <= tolerance
    return fresh and hmac.compare_digest(expected, headers["X-Bros-Signature"])


def test_webhook_delivers_a_signed_event_to_the_receiver(demo, receiver, eager_celery):
    """An order taken after the webhook exists is POSTed once, signed, with its delivery id."""
    make_webhook(receiver.url)
    order = take_order(demo)

    assert tasks.dispatch_webhooks.apply().get() == 1

    (request,) = receiver.requests
    assert request.path == "/hooks/bros?source=test"
    assert verify(SECRET, request.headers, request.body)
    assert not verify("another secret, same length", request.headers, request.body)
    body = json.loads(request.body)
    assert body["event"] == "order.created" == request.headers["X-Bros-Event"]
    assert body["stream"] == "orders:gangnam"
    assert body["data"]["id"] == order.pk
    assert body["delivery"] == request.headers["X-Bros-Delivery"]
    assert request.headers["Content-Type"] == "application/json"
    delivery = WebhookDelivery.objects.get()
    assert str(delivery.delivery_id) == body["delivery"]
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)
    assert delivery.body.encode() == request.body


def test_webhook_retries_after_a_500_and_then_succeeds(demo, receiver, eager_celery, settings):
    """A 500 is retried by the Celery task with the same delivery id; the 200 ends it."""
    settings.WEBHOOK_RETRY_BASE = 0  # eager tasks ignore countdowns: make the retry due at once
    receiver.statuses = [500]
    make_webhook(receiver.url)
    take_order(demo)

    tasks.dispatch_webhooks.apply()

    assert len(receiver.requests) == 2
    first, second = receiver.requests
    assert first.headers["X-Bros-Delivery"] == second.headers["X-Bros-Delivery"]
    assert first.body == second.body
    assert verify(SECRET, second.headers, second.body)
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 2, 200)
    assert delivery.last_error == ""


def test_webhook_failure_waits_for_its_back_off(demo, receiver, eager_celery):
    """After a 500 the delivery is pending with its error, and not sent again before it is due."""
    receiver.statuses = [500]
    make_webhook(receiver.url)
    take_order(demo)
    before = timezone.now()

    tasks.dispatch_webhooks.apply()

    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, 500)
    assert delivery.last_error.startswith("HTTP 500")
    assert delivery.next_attempt_at >= before + timedelta(seconds=30)
    tasks.send_webhook.apply((delivery.pk,))
    tasks.retry_webhooks.apply()
    assert len(receiver.requests) == 1


def test_webhook_retry_sweep_sends_overdue_deliveries(demo, receiver, eager_celery):
    """A delivery whose retry task was lost is sent by the beat sweep once overdue."""
    receiver.statuses = [503]
    make_webhook(receiver.url)
    take_order(demo)
    tasks.dispatch_webhooks.apply()
    WebhookDelivery.objects.update(next_attempt_at=timezone.now() - timedelta(minutes=1))

    assert tasks.retry_webhooks.apply().get() == 1

    assert len(receiver.requests) == 2
    assert WebhookDelivery.objects.get().status == "delivered"


def test_webhook_back_off_doubles_up_to_the_cap(settings):
    """30 s, 60 s, 120 s … never more than WEBHOOK_RETRY_MAX."""
    assert [webhooks.backoff(n) for n in (1, 2, 3)] == [30, 60, 120]
    assert webhooks.backoff(20) == settings.WEBHOOK_RETRY_MAX == 3600


def test_webhook_gives_up_after_max_attempts(demo, receiver, eager_celery, settings):
    """Past max_attempts the delivery is failed and no more requests are made."""
    settings.WEBHOOK_RETRY_BASE = 0
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    receiver.statuses = [500, 500, 500, 500]
    make_webhook(receiver.url)
    take_order(demo)

    tasks.dispatch_webhooks.apply()

    assert len(receiver.requests) == 3
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == ("failed", 3, None)


def test_webhook_does_not_follow_redirects(demo, receiver, eager_celery):
    """A 302 is a failed attempt, logged with its Location; the other URL is never requested."""
    receiver.statuses = [302]
    receiver.headers = {"Location": "http://127.0.0.1:9/elsewhere"}
    make_webhook(receiver.url)
    take_order(demo)

    tasks.dispatch_webhooks.apply()

    assert len(receiver.requests) == 1
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.last_status_code) == ("pending", 302)
    assert "http://127.0.0.1:9/elsewhere" in delivery.last_error
    assert "not followed" in delivery.last_error


def test_webhook_times_out_on_a_receiver_that_does_not_answer(demo, receiver, eager_celery, settings):
    """A receiver that hangs costs one timeout, logged as the attempt's error."""
    settings.WEBHOOK_TIMEOUT = 0.2
    receiver.hold = threading.Event()
    make_webhook(receiver.url)
    take_order(demo)

    tasks.dispatch_webhooks.apply()

    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.last_status_code) == ("pending", None)
    assert "timed out" in delivery.last_error


def test_webhook_unreachable_receiver_is_logged(demo, eager_celery):
    """A refused connection is a failed attempt with the error, not a crash."""
    make_webhook("http://127.0.0.1:9/nothing-listens")
    take_order(demo)

    tasks.dispatch_webhooks.apply()

    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("pending", 1)
    assert "ConnectionRefusedError" in delivery.last_error


def test_webhook_filters_by_event_type_and_center(demo, receiver, eager_celery):
    """Only the chosen events of the chosen centers are sent; other webhooks get theirs."""
    mapo_only = make_webhook(receiver.url, events=["order.cancelled"], centers=[demo.center("mapo")])
    every_center = make_webhook(receiver.url + "&all=1", events=["order.cancelled", "assignment.revoked"])
    gangnam = take_order(demo, center="gangnam")
    mapo = take_order(demo, center="mapo")
    cancel_order(actor=None, order_id=gangnam.pk, reason="Customer called")
    cancel_order(actor=None, order_id=mapo.pk, reason="Customer called")

    tasks.dispatch_webhooks.apply()

    sent = {(d.webhook_id, d.event, json.loads(d.body)["data"]["center"]) for d in WebhookDelivery.objects.all()}
    assert sent == {
        (mapo_only.pk, "order.cancelled", "mapo"),
        (every_center.pk, "order.cancelled", "gangnam"),
        (every_center.pk, "order.cancelled", "mapo"),
    }
    assert len(receiver.requests) == 3


def test_webhook_center_of_a_user_stream_event_is_its_delivery_center():
    """Events on user:<id> streams are filtered by the center of the delivery they carry."""
    assert webhooks.event_center("user:7", {"delivery": {"center": "mapo"}, "reason": "x"}) == "mapo"
    assert webhooks.event_center("orders:gangnam", {}) == "gangnam"
    assert webhooks.event_center("broadcast:all", {"text": "hi"}) is None


def test_webhook_gets_no_events_from_before_it_existed(demo, receiver, eager_celery):
    """Events committed before the webhook was registered are not sent to it."""
    take_order(demo)
    tasks.dispatch_webhooks.apply()  # no webhook yet: the cursors move on
    make_webhook(receiver.url)
    new = take_order(demo)

    tasks.dispatch_webhooks.apply()

    assert [body["data"]["id"] for body in receiver.json_bodies()] == [new.pk]


def test_inactive_webhook_gets_nothing(demo, receiver, eager_celery):
    """A paused webhook gets no deliveries."""
    make_webhook(receiver.url, active=False)
    take_order(demo)

    assert tasks.dispatch_webhooks.apply().get() == 0
    assert receiver.requests == []


def test_webhook_dispatch_sends_each_event_once(demo, receiver, eager_celery):
    """A second dispatch run finds nothing new: the cursors moved past what was sent."""
    make_webhook(receiver.url)
    take_order(demo)
    assert tasks.dispatch_webhooks.apply().get() == 1
    assert tasks.dispatch_webhooks.apply().get() == 0
    assert len(receiver.requests) == 1


def test_webhook_gets_an_event_whose_transaction_commits_after_a_later_one(demo_tx, receiver):
    """An order whose events got lower ids but committed late is still delivered (cursors by seq)."""
    make_webhook(receiver.url)
    started, release = threading.Event(), threading.Event()
    late = {}

    def slow_command():
        try:
            with transaction.atomic():
                late["order"] = take_order(demo_tx, center="mapo")
                started.set()
                release.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=slow_command)
    thread.start()
    try:
        assert started.wait(10)
        early = take_order(demo_tx, center="gangnam")  # commits first, with higher event ids
        webhooks.dispatch_new_events()
    finally:
        release.set()
        thread.join(10)
    webhooks.dispatch_new_events()

    sent = list(WebhookDelivery.objects.order_by("id").values_list("stream", "body"))
    assert [(stream, json.loads(body)["data"]["id"]) for stream, body in sent] == [
        ("orders:gangnam", early.pk),
        ("orders:mapo", late["order"].pk),
    ]


def test_webhook_dispatch_task_takes_batch_after_batch(demo, receiver, monkeypatch):
    """More new events than a batch are all dispatched by one run of the task, batch by batch."""
    make_webhook(receiver.url)
    for _ in range(5):
        take_order(demo)
    real = webhooks.dispatch_new_events
    monkeypatch.setattr(webhooks, "dispatch_new_events", lambda: real(batch=2))
    queued = []
    monkeypatch.setattr(tasks.send_webhook, "delay", queued.append)

    assert tasks.dispatch_webhooks.apply().get() == 5

    assert sorted(queued) == sorted(WebhookDelivery.objects.values_list("pk", flat=True))


def dispatch_queries() -> int:
    with CaptureQueriesContext(connection) as captured:
        webhooks.dispatch_new_events()
    return len(captured.captured_queries)


def test_webhook_dispatch_costs_the_same_queries_for_3_or_30_events(demo, receiver):
    """One batch is a fixed number of queries, whatever the number of events and deliveries."""
    make_webhook(receiver.url)
    for _ in range(3):
        take_order(demo)
    few = dispatch_queries()
    for _ in range(30):
        take_order(demo)
    assert dispatch_queries() == few
    assert WebhookDelivery.objects.count() == 33


def test_taking_an_order_costs_no_more_queries_with_webhooks(demo, receiver):
    """Webhooks add nothing to the command path: the dispatcher reads the outbox later."""

    def order_queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            take_order(demo)
        return len(captured.captured_queries)

    take_order(demo)  # the streams' counter rows exist from now on
    without = order_queries()
    make_webhook(receiver.url, events=["order.created", "delivery.created"])
    assert order_queries() == without


def test_webhook_dispatch_with_no_webhook_is_cheap(demo):
    """With no active webhook a dispatch run only moves the cursors."""
    take_order(demo)
    # The savepoint (a transaction outside tests), the lock, the webhooks, the cursors, the release.
    assert dispatch_queries() == 5


# --- admin -----------------------------------------------------------------------------------------


@pytest.fixture
def superuser(client, demo, settings):
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    client.force_login(demo.user("admin"))
    return client


def webhook_form(**fields) -> dict:
    return {
        "name": "Customer app",
        "url": "https://hooks.example.test/bros",
        "secret": SECRET,
        "event_types": ["order.cancelled", "delivery.delivered"],
        "active": "on",
        **fields,
    }


def test_webhook_admin_stores_the_secret_and_never_shows_it(superuser, demo):
    """The secret typed at creation signs requests but is never rendered back, not even in part."""
    response = superuser.post(reverse("admin:realtime_webhook_add"), webhook_form(centers=[demo.center().pk]))
    assert response.status_code == 302
    webhook = Webhook.objects.get()
    assert (webhook.secret, webhook.event_types) == (SECRET, ["order.cancelled", "delivery.delivered"])
    assert [c.code for c in webhook.centers.all()] == ["gangnam"]

    page = superuser.get(reverse("admin:realtime_webhook_change", args=[webhook.pk])).content.decode()
    assert f"Set ({len(SECRET)} characters; not shown)." in page
    assert SECRET[:8] not in page
    listing = superuser.get(reverse("admin:realtime_webhook_changelist")).content.decode()
    assert SECRET[:8] not in listing


def test_webhook_admin_change_keeps_or_replaces_the_secret(superuser):
    """An empty secret field keeps the secret; a typed one replaces it."""
    superuser.post(reverse("admin:realtime_webhook_add"), webhook_form())
    webhook = Webhook.objects.get()
    change = reverse("admin:realtime_webhook_change", args=[webhook.pk])
    assert superuser.post(change, webhook_form(secret="", name="Renamed")).status_code == 302
    webhook.refresh_from_db()
    assert (webhook.name, webhook.secret) == ("Renamed", SECRET)
    assert superuser.post(change, webhook_form(secret="a-brand-new-secret-42")).status_code == 302
    webhook.refresh_from_db()
    assert webhook.secret == "a-brand-new-secret-42"


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"url": "ftp://hooks.example.test/bros"}, "url", "Use an http:// or https:// URL."),
        ({"url": "https://user:pw@hooks.example.test/"}, "url", "Leave user and password out of the URL"),
        ({"secret": "short"}, "secret", "at least 16 characters"),
        ({"secret": ""}, "secret", "This field is required."),
        ({"event_types": ["no.such.event"]}, "event_types", "Select a valid choice."),
        ({"event_types": []}, "event_types", "This field is required."),
    ],
)
def test_webhook_admin_refuses_bad_input_next_to_the_field(superuser, fields, field, message):
    """Bad URLs, short secrets and unknown events are refused with the message on the field."""
    response = superuser.post(reverse("admin:realtime_webhook_add"), webhook_form(**fields))
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert message in " ".join(form.errors[field])
    assert form["name"].value() == "Customer app"  # what was typed is kept
    assert not Webhook.objects.exists()


def test_webhook_admin_log_shows_attempts_and_errors(superuser, demo, receiver, eager_celery, settings):
    """The delivery log lists each delivery's status, attempts and last error."""
    settings.WEBHOOK_MAX_ATTEMPTS = 1
    receiver.statuses = [500]
    make_webhook(receiver.url)
    take_order(demo)
    tasks.dispatch_webhooks.apply()
    delivery = WebhookDelivery.objects.get()

    listing = superuser.get(reverse("admin:realtime_webhookdelivery_changelist")).content.decode()
    assert str(delivery.delivery_id) in listing
    assert "Failed (gave up)" in listing
    assert "HTTP 500" in listing
    page = superuser.get(reverse("admin:realtime_webhookdelivery_change", args=[delivery.pk])).content.decode()
    assert "HTTP 500: ok" in page
    assert "order.created" in page


def test_webhook_admin_send_again_resends_with_the_same_delivery_id(
    superuser, demo, receiver, eager_celery, settings, django_capture_on_commit_callbacks
):
    """ "Send again" on a failed delivery sends it again at once, the same id, and records the success."""
    settings.WEBHOOK_MAX_ATTEMPTS = 1
    receiver.statuses = [500]
    make_webhook(receiver.url)
    take_order(demo)
    tasks.dispatch_webhooks.apply()
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "failed"

    with django_capture_on_commit_callbacks(execute=True):
        response = superuser.post(
            reverse("admin:realtime_webhookdelivery_changelist"),
            {"action": "send_again", ACTION_CHECKBOX_NAME: [delivery.pk]},
            follow=True,
        )

    assert "Sending 1 deliveries again." in [str(m) for m in get_messages(response.wsgi_request)]
    assert len(receiver.requests) == 2
    assert receiver.requests[0].headers["X-Bros-Delivery"] == receiver.requests[1].headers["X-Bros-Delivery"]
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 2, 200)


def test_webhook_resend_is_refused_to_a_user_without_the_permission(demo, receiver):
    """Only users who may change deliveries may resend them (the service checks, whoever calls)."""
    make_webhook(receiver.url)
    take_order(demo)
    webhooks.dispatch_new_events()
    with pytest.raises(PermissionDenied):
        webhooks.resend_deliveries(actor=demo.user("dispatch-gangnam"), delivery_ids=[WebhookDelivery.objects.get().pk])
    with pytest.raises(PermissionDenied):
        webhooks.resend_deliveries(actor=None, delivery_ids=[])


def test_webhook_resend_leaves_deliveries_of_an_inactive_webhook_alone(demo, receiver):
    """ "Send again" does not touch a delivery whose webhook was deactivated since."""
    webhook = make_webhook(receiver.url)
    take_order(demo)
    webhooks.dispatch_new_events()
    Webhook.objects.update(active=False)
    delivery = WebhookDelivery.objects.get(webhook=webhook)

    assert webhooks.resend_deliveries(actor=demo.user("admin"), delivery_ids=[delivery.pk]) == []


def test_prune_history_drops_finished_deliveries_past_their_retention(demo, receiver, eager_celery, settings):
    """Delivered and failed deliveries older than WEBHOOK_LOG_RETENTION go; pending ones stay."""
    make_webhook(receiver.url, events=["order.created", "delivery.created"])
    take_order(demo)
    tasks.dispatch_webhooks.apply()
    delivered, kept = WebhookDelivery.objects.order_by("id")
    WebhookDelivery.objects.filter(pk=kept.pk).update(status="pending")
    WebhookDelivery.objects.update(created_at=timezone.now() - settings.WEBHOOK_LOG_RETENTION - timedelta(hours=1))

    tasks.prune_history.apply()

    assert list(WebhookDelivery.objects.values_list("pk", flat=True)) == [kept.pk]


def test_webhook_admin_send_again_says_which_deliveries_it_left_alone(superuser, demo, receiver):
    """Selected deliveries of an inactive webhook are not resent, and the admin is told why."""
    make_webhook(receiver.url)
    take_order(demo)
    webhooks.dispatch_new_events()
    Webhook.objects.update(active=False)
    delivery = WebhookDelivery.objects.get()

    response = superuser.post(
        reverse("admin:realtime_webhookdelivery_changelist"),
        {"action": "send_again", ACTION_CHECKBOX_NAME: [delivery.pk]},
        follow=True,
    )

    shown = [str(m) for m in get_messages(response.wsgi_request)]
    assert shown == ["Left 1 alone: their webhook is inactive (activate it first)."]
    assert receiver.requests == []


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/", "ftp://127.0.0.1/hook", "http://xn--a.example/"])
def test_webhook_with_a_url_that_no_longer_works_logs_the_error(demo, eager_celery, url):
    """A URL broken after it was saved (edited in the database) is a failed attempt, not a crash."""
    webhook = make_webhook("http://127.0.0.1:9/")
    Webhook.objects.filter(pk=webhook.pk).update(url=url)
    take_order(demo)

    tasks.dispatch_webhooks.apply()

    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, None)
    assert delivery.last_error
