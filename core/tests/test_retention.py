"""Retention tasks (docs/running.md): old rows go, recent ones stay, the audit trail is kept by default."""

from __future__ import annotations

from datetime import timedelta
from importlib import import_module

from django.conf import settings
from django.contrib.sessions.models import Session
from django.utils import timezone

from core import tasks as core_tasks
from core.models import IdempotencyRecord
from deliveries import tasks as delivery_tasks
from deliveries.models import TimelineEntry
from riders import tasks as rider_tasks
from riders.models import PositionSample


def test_prune_idempotency_records_deletes_only_records_past_retention(db, settings):
    settings.IDEMPOTENCY_RETENTION = timedelta(hours=48)
    old = IdempotencyRecord.objects.create(owner="user:1", key="old", fingerprint="f", status_code=200, body={})
    new = IdempotencyRecord.objects.create(owner="user:1", key="new", fingerprint="f", status_code=200, body={})
    IdempotencyRecord.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=49))
    assert core_tasks.prune_idempotency_records() == 1
    assert list(IdempotencyRecord.objects.filter(pk__in=[old.pk, new.pk]).values_list("key", flat=True)) == ["new"]


def test_prune_position_samples_deletes_only_samples_past_their_own_retention(demo, settings):
    settings.POSITION_RETENTION = timedelta(days=7)
    rider = demo.rider()
    now = timezone.now()
    old = PositionSample.objects.create(rider=rider, lat=37.5, lng=127.0, recorded_at=now - timedelta(days=8))
    new = PositionSample.objects.create(rider=rider, lat=37.5, lng=127.0, recorded_at=now - timedelta(days=6))
    assert rider_tasks.prune_position_samples() >= 1
    assert not PositionSample.objects.filter(pk=old.pk).exists()
    assert PositionSample.objects.filter(pk=new.pk).exists()


def test_clear_expired_sessions_keeps_live_sessions(db):
    store_class = import_module(settings.SESSION_ENGINE).SessionStore
    live, expired = store_class(), store_class()
    live["x"], expired["x"] = 1, 1
    live.create()
    expired.set_expiry(-1)
    expired.create()
    Session.objects.filter(session_key=expired.session_key).update(expire_date=timezone.now() - timedelta(days=1))
    core_tasks.clear_expired_sessions()
    assert Session.objects.filter(session_key=live.session_key).exists()
    assert not Session.objects.filter(session_key=expired.session_key).exists()


def _timeline_entry(demo, age: timedelta) -> TimelineEntry:
    from tests.support import take_order

    order = take_order(demo)
    entry = TimelineEntry.objects.filter(delivery__order=order).first()
    TimelineEntry.objects.filter(pk=entry.pk).update(at=timezone.now() - age)
    return entry


def test_prune_timeline_keeps_every_entry_by_default(demo, settings):
    settings.TIMELINE_RETENTION_DAYS = 0
    entry = _timeline_entry(demo, timedelta(days=4000))
    assert delivery_tasks.prune_timeline() == 0
    assert TimelineEntry.objects.filter(pk=entry.pk).exists()


def test_prune_timeline_deletes_old_entries_when_a_retention_is_set(demo, settings):
    settings.TIMELINE_RETENTION_DAYS = 365
    old = _timeline_entry(demo, timedelta(days=400))
    new = _timeline_entry(demo, timedelta(days=10))
    assert delivery_tasks.prune_timeline() >= 1
    assert not TimelineEntry.objects.filter(pk=old.pk).exists()
    assert TimelineEntry.objects.filter(pk=new.pk).exists()


def test_retention_tasks_are_scheduled_by_beat():
    tasks = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {
        "core.tasks.prune_idempotency_records",
        "core.tasks.clear_expired_sessions",
        "riders.tasks.prune_position_samples",
        "deliveries.tasks.prune_timeline",
    } <= tasks
