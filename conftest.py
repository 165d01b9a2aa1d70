"""Shared test fixtures: the demo data set (design.md) on real PostgreSQL and Redis."""

from __future__ import annotations

import gc
import os
import socket
import uuid

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.db import connections, transaction

from core.models import Center
from deliveries.demo import load_demo_data
from deliveries.models import Shop
from riders.models import Rider


@pytest.fixture(scope="session", autouse=True)
def _isolated_redis_prefix():
    """Give this test run its own Redis keys and channels on a shared Redis."""
    django_settings.REDIS_PREFIX = f"bros-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(autouse=True)
def _fresh_publish_rate_limits():
    """Each test starts with full publish allowances: the buckets are per user, across tests."""
    yield
    from realtime.bus import REDIS_DOWN, get_redis

    try:
        client = get_redis()
        keys = list(client.scan_iter(f"{django_settings.REDIS_PREFIX}:rate:*", count=1000))
        if keys:
            client.delete(*keys)
    except REDIS_DOWN:  # a test that simulated an outage left nothing to clear
        pass


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    """Give each test process its own test database, so concurrent runs on one server don't collide."""
    from pytest_django.fixtures import _set_suffix_to_test_databases

    _set_suffix_to_test_databases(suffix=str(os.getpid()))


@pytest.fixture(scope="session", autouse=True)
def _no_map_tiles():
    """No map tiles in tests (as `MAP_TILE_URL=` configures it): pages never point at a tile server."""
    django_settings.MAP_TILE_URL = ""
    django_settings.MAP_TILE_ATTRIBUTION = ""


@pytest.fixture(scope="session", autouse=True)
def _plain_static_storage():
    """Tests render pages without `collectstatic`: serve static files unhashed."""
    django_settings.STORAGES = {
        **django_settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


class DemoRows:
    """The demo data's rows as PostgreSQL COPY data, taken once right after `load_demo_data()`.

    Every transactional test ends with a flush, and the next one needing the demo data gets it
    back: copied in, that takes a few milliseconds, where `load_demo_data()` takes ~0.4 s of
    ORM round trips (times ~300 transactional tests). Tables the flush refills itself (content
    types, permissions) or never empties (migrations) are left out. Sequences are not reset by a
    flush, so the restored ids stay below every id handed out since.
    """

    SKIP = frozenset({"django_content_type", "auth_permission", "django_migrations"})

    def __init__(self) -> None:
        self.rows: dict[str, bytes] = {}

    def take(self) -> None:
        with connections["default"].cursor() as cursor:
            for table in connections["default"].introspection.django_table_names(only_existing=True):
                if table in self.SKIP:
                    continue
                with cursor.cursor.copy(f'COPY "{table}" TO STDOUT') as copy:
                    data = b"".join(bytes(chunk) for chunk in copy)
                if data:
                    self.rows[table] = data

    def restore(self) -> None:
        """Copy the rows back into the (flushed) tables; foreign keys are checked at commit."""
        with transaction.atomic(), connections["default"].cursor() as cursor:
            for table, data in self.rows.items():
                with cursor.cursor.copy(f'COPY "{table}" FROM STDIN') as copy:
                    copy.write(data)


_demo_rows = DemoRows()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """Load the demo data once; rollback tests share it, transactional tests get its rows back."""
    with django_db_blocker.unblock():
        load_demo_data()
        _demo_rows.take()
    yield
    # Threads of async tests and live servers leave connections in the pool: close them all,
    # or the test database cannot be dropped.
    for db in connections.all():
        if getattr(db, "pool", None) is not None:
            db.close_pool()


class Demo:
    """Look-ups into the demo data by its fixed names."""

    def user(self, username: str):
        return get_user_model().objects.get(username=username)

    def center(self, code: str = "gangnam") -> Center:
        return Center.objects.get(code=code)

    def shop(self, code: str = "gangnam", index: int = 0) -> Shop:
        return Shop.objects.filter(center__code=code).order_by("name")[index]

    def rider(self, code: str = "gangnam", number: int = 1) -> Rider:
        return Rider.objects.select_related("user", "center").get(user__username=f"rider-{code}-{number:02d}")


def _ensure_demo() -> Demo:
    if not Center.objects.exists():  # a transactional test before this one flushed the database
        _demo_rows.restore()
    return Demo()


@pytest.fixture
def demo(db) -> Demo:
    return _ensure_demo()


@pytest.fixture
def demo_tx(transactional_db) -> Demo:
    return _ensure_demo()


@pytest.fixture
def no_live_positions():
    """No live rider positions in this run's Redis keys, before and after the test."""
    from realtime.bus import get_redis

    def clean():
        redis = get_redis()
        keys = list(redis.scan_iter(match=f"{django_settings.REDIS_PREFIX}:pos:*", count=1000))
        if keys:
            redis.delete(*keys)

    clean()
    yield
    clean()


class RedisOutage:
    """Redis made unreachable for this process's code by pointing its client at a closed port.

    The machine's shared Redis keeps running (other test runs use it). `end()` brings the real
    client back, as when Redis returns.
    """

    def __init__(self, settings):
        from core import redis_connection as bus

        self._bus, self._settings = bus, settings
        self._client, self._url = bus._client, settings.REDIS_URL

    def start(self) -> None:
        with socket.socket() as probe:  # a port nothing listens on: connecting is refused
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self._settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
        self._bus._client = None  # get_redis() builds its client from the closed URL

    def end(self) -> None:
        self._bus._client, self._settings.REDIS_URL = self._client, self._url


@pytest.fixture
def redis_outage(settings):
    """Redis is down for the test's own code (the bus connects to a closed port) until `end()`."""
    from realtime.bus import redis_health

    outage = RedisOutage(settings)
    outage.start()
    yield outage
    outage.end()
    redis_health.up()  # this process's next Redis call would find it back anyway


@pytest.fixture
def package_metadata_reads(monkeypatch):
    """Every read of an installed package's version (a walk of sys.path), recorded."""
    import importlib.metadata

    reads: list[str] = []
    real_version = importlib.metadata.version

    def version(name):
        reads.append(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    return reads


@pytest.fixture(autouse=True)
def _collector_as_found():
    """A test that starts the ASGI lifespan tunes this process's collector: undo it after."""
    thresholds = gc.get_threshold()
    yield
    if gc.get_freeze_count():
        gc.unfreeze()
    gc.set_threshold(*thresholds)
