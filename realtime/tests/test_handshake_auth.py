"""The WebSocket handshake's authentication (`realtime.auth`, issue 13): what a connect and a first
subscribe cost (thread hops, queries), that the one-query Access equals `access_for`'s, and every
refusal of Django's `get_user` kept (inactive, deleted, stale password hash, expired session,
unknown backend)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.sessions.models import Session
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from bros.asgi import application
from core.access import access_for, cached_access
from core.access_versions import versions_key
from core.models import Center, StaffProfile
from core.redis_connection import get_redis
from realtime.auth import authenticate, authenticate_many
from realtime.tests import cost
from realtime.tests.wsclient import in_thread, session_cookie, user_named

DISPATCHER = "dispatch-gangnam"
RIDER = "rider-gangnam-01"
CALLCENTER = "callcenter"
HQ = "hq"
ADMIN = "admin"
OWN_CENTER = "deliveries:gangnam"


def key_of(user, backend: str | None = None) -> str:
    """Log `user` in and return the session key."""
    return session_cookie(user, backend=backend).partition("=")[2]


def fresh_access(user):
    return access_for(get_user_model().objects.get(pk=user.pk))


# -- the handshake's read (sync) ----------------------------------------------------------------------


@pytest.mark.parametrize("username", [DISPATCHER, RIDER, CALLCENTER, HQ, ADMIN])
def test_handshake_reads_session_then_user_with_access_in_two_queries(demo, username):
    """Session row, then user + role + centers + rider row: two queries, the Access equal to access_for's."""
    user = user_named(username)
    key = key_of(user)
    with CaptureQueriesContext(connection) as queries:
        found, _ = authenticate(key)
    assert found.pk == user.pk
    assert len(queries) == 2, [q["sql"] for q in queries]
    assert cached_access(found) == fresh_access(user)


def test_handshake_access_of_a_user_of_several_centers_or_no_profile_equals_access_for(demo):
    several = user_named(DISPATCHER)
    several.staff.centers.add(Center.objects.get(code="mapo"))
    nobody = get_user_model().objects.create_user("no-profile", password="x")
    lone_rider = get_user_model().objects.create_user("rider-without-row", password="x")
    StaffProfile.objects.create(user=lone_rider, role=StaffProfile.Role.RIDER)
    for user in (several, nobody, lone_rider):
        found, _ = authenticate(key_of(user))
        assert cached_access(found) == fresh_access(user), user.username
    assert cached_access(authenticate(key_of(several))[0]).centers == {"gangnam", "mapo"}
    assert cached_access(authenticate(key_of(nobody))[0]).role is None


def test_handshake_returns_the_users_access_version(demo):
    user = user_named(DISPATCHER)
    key = key_of(user)
    before = authenticate(key)[1]
    get_redis().hincrby(versions_key(), str(user.pk), 3)
    assert authenticate(key)[1] == before + 3


def test_handshake_unknown_or_missing_session_is_anonymous_in_at_most_one_query(demo):
    with CaptureQueriesContext(connection) as queries:
        assert authenticate("not-a-session") == (None, 0)
    assert len(queries) == 1
    with CaptureQueriesContext(connection) as queries:
        assert authenticate(None) == (None, 0)
        assert authenticate("") == (None, 0)
    assert len(queries) == 0


def test_handshake_refuses_an_expired_session(demo):
    key = key_of(user_named(DISPATCHER))
    Session.objects.filter(session_key=key).update(expire_date=timezone.now() - timedelta(seconds=1))
    assert authenticate(key) == (None, 0)


def test_handshake_refuses_an_inactive_or_deleted_user(demo):
    user = user_named(RIDER)
    key = key_of(user)
    type(user).objects.filter(pk=user.pk).update(is_active=False)
    assert authenticate(key) == (None, 0)
    other = user_named(CALLCENTER)
    key = key_of(other)
    other.delete()
    assert authenticate(key) == (None, 0)


def test_handshake_refuses_a_session_from_before_a_password_change_and_flushes_it(demo):
    user = user_named(DISPATCHER)
    key = key_of(user)
    user.set_password("changed")
    user.save()
    assert authenticate(key) == (None, 0)
    assert not Session.objects.filter(session_key=key).exists()


def test_handshake_refuses_a_session_whose_backend_is_no_longer_configured(demo, settings):
    key = key_of(user_named(DISPATCHER))
    settings.AUTHENTICATION_BACKENDS = ["realtime.tests.test_handshake_auth.NoRidersBackend"]
    assert authenticate(key) == (None, 0)


def test_handshake_refuses_a_session_naming_no_valid_user_id(demo):
    user = user_named(DISPATCHER)
    key = key_of(user)
    session = Session.objects.get(session_key=key)
    data = session.get_decoded()
    data["_auth_user_id"] = "not-a-number"
    Session.objects.filter(session_key=key).update(session_data=Session.objects.encode(data))
    assert authenticate(key) == (None, 0)


# -- a batch of handshakes (single-flight: those arriving during a lookup are read together) -------------


def test_a_batch_of_distinct_sessions_costs_two_queries_and_refuses_each_bad_one_like_alone(demo):
    """Valid sessions (two of one user), unknown, expired, stale-hash, inactive and deleted ones, in one
    batch: each gets exactly the answer it gets alone, in two queries plus the stale session's flush."""
    dispatcher, rider, callcenter, hq = (user_named(n) for n in (DISPATCHER, RIDER, CALLCENTER, HQ))
    good = [key_of(dispatcher), key_of(dispatcher), key_of(hq), key_of(user_named(ADMIN))]
    expired = key_of(user_named("dispatch-mapo"))
    Session.objects.filter(session_key=expired).update(expire_date=timezone.now() - timedelta(seconds=1))
    stale = key_of(callcenter)
    callcenter.set_password("changed")
    callcenter.save()
    inactive = key_of(rider)
    type(rider).objects.filter(pk=rider.pk).update(is_active=False)
    deleted_user = get_user_model().objects.create_user("to-delete", password="x")
    deleted = key_of(deleted_user)
    deleted_user.delete()
    keys = [*good, "not-a-session", expired, stale, inactive, deleted, None, ""]
    with CaptureQueriesContext(connection) as queries:
        results = authenticate_many(keys)
    # sessions; users + access; the stale session's flush (Django's delete: get, then delete)
    assert len(queries) == 4, [q["sql"] for q in queries]
    assert [user.pk if user else None for user, _ in results] == [
        *(dispatcher.pk, dispatcher.pk, hq.pk, user_named(ADMIN).pk),
        *[None] * 7,
    ]
    assert results[0][0] is not results[1][0], "each connection gets its own user object"
    for user, _ in results[:4]:
        assert cached_access(user) == fresh_access(user)
    assert not Session.objects.filter(session_key=stale).exists()
    assert [authenticate(key) for key in keys[4:]] == [(None, 0)] * 7


def test_a_batch_with_one_session_several_times_reads_it_once(demo):
    """Several tabs' handshakes may share a session cookie: still two queries, one user object each."""
    dispatcher = user_named(DISPATCHER)
    key = key_of(dispatcher)
    with CaptureQueriesContext(connection) as queries:
        results = authenticate_many([key] * 5)
    assert len(queries) == 2, [q["sql"] for q in queries]
    assert [user.pk for user, _ in results] == [dispatcher.pk] * 5
    assert len({id(user) for user, _ in results}) == 5


def test_a_batch_reads_each_users_access_version(demo):
    dispatcher, hq = user_named(DISPATCHER), user_named(HQ)
    keys = [key_of(dispatcher), key_of(hq)]
    before = [version for _, version in authenticate_many(keys)]
    get_redis().hincrby(versions_key(), str(hq.pk), 2)
    assert [version for _, version in authenticate_many(keys)] == [before[0], before[1] + 2]


class FailingForRidersBackend(ModelBackend):
    """A deployment's backend that fails (say, its directory is down) for riders only."""

    def get_user(self, user_id):
        user = super().get_user(user_id)
        if user is not None and user.username.startswith("rider-"):
            raise RuntimeError("directory unavailable")
        return user


def test_a_session_whose_lookup_fails_fails_alone_in_its_batch(demo, settings):
    path = "realtime.tests.test_handshake_auth.FailingForRidersBackend"
    settings.AUTHENTICATION_BACKENDS = [path, "django.contrib.auth.backends.ModelBackend"]
    rider_key = key_of(user_named(RIDER), backend=path)
    dispatcher = user_named(DISPATCHER)
    failed, (found, _) = authenticate_many([rider_key, key_of(dispatcher)])
    assert isinstance(failed, RuntimeError)
    assert found.pk == dispatcher.pk
    with pytest.raises(RuntimeError):
        authenticate(rider_key)


def test_a_batch_with_another_session_engine_loads_each_session_itself_and_refuses_the_same(demo, settings):
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
    dispatcher = user_named(DISPATCHER)
    good, expired = key_of(dispatcher), key_of(user_named(HQ))
    Session.objects.filter(session_key=expired).update(expire_date=timezone.now() - timedelta(seconds=1))
    from django.core.cache import cache

    cache.clear()  # cached_db would otherwise answer from the login's cache entry
    results = authenticate_many([good, expired, "not-a-session"])
    assert [user.pk if user else None for user, _ in results] == [dispatcher.pk, None, None]


async def test_concurrent_handshakes_share_one_lookup_after_the_first(ws):
    """K handshakes at once: the first is looked up alone at once, the K - 1 arriving meanwhile in ONE more
    hop and two more queries; every one is accepted as the user of its own session."""
    k = 12
    users = [await ws.user(name) for name in (DISPATCHER, HQ, CALLCENTER, ADMIN)]
    cookies = [await in_thread(session_cookie, users[i % len(users)]) for i in range(k)]
    with cost.counting() as spent:
        app = spent.app(application)
        attempts = await asyncio.gather(*(ws.attempt(cookie=cookie, app=app) for cookie in cookies))
    assert all(accepted for accepted, _ in attempts)
    assert (spent.hops, len(spent.queries)) == (["authenticate_many"] * 2, 4), spent.queries
    for i, (_, client) in enumerate(attempts):  # each socket is its own session's user
        user = users[i % len(users)]
        assert (await client.subscribe(f"user:{user.pk}"))["type"] == "subscribed", user.username
        if user.username in (DISPATCHER, CALLCENTER):
            assert (await client.subscribe(f"user:{users[1].pk}"))["code"] == "forbidden", user.username


class NoRidersBackend(ModelBackend):
    """A deployment's own backend: its `get_user` is honoured (here: riders may not sign in)."""

    def get_user(self, user_id):
        user = super().get_user(user_id)
        return None if user is None or user.username.startswith("rider-") else user


def test_handshake_honours_a_custom_backends_get_user(demo, settings):
    path = "realtime.tests.test_handshake_auth.NoRidersBackend"
    settings.AUTHENTICATION_BACKENDS = [path]
    rider_key = key_of(user_named(RIDER), backend=path)
    assert authenticate(rider_key) == (None, 0)
    dispatcher = user_named(DISPATCHER)
    found, _ = authenticate(key_of(dispatcher, backend=path))
    assert found.pk == dispatcher.pk
    assert cached_access(found) == fresh_access(dispatcher)


# -- through the ASGI application ---------------------------------------------------------------------


async def test_connect_and_subscribe_to_own_center_cost_one_hop_and_two_queries_in_all(ws):
    """Handshake: one thread hop, two queries. Subscribe without `since` to the own center: none."""
    await (await ws.connect(DISPATCHER)).subscribe(OWN_CENTER)  # the feed is primed: later joins need no prime
    cookie = await in_thread(session_cookie, await ws.user(DISPATCHER))
    with cost.counting() as spent:
        accepted, client = await ws.attempt(cookie=cookie, app=spent.app(application))
        assert accepted
        connected = spent.since((0, 0))
        mark = spent.mark()
        assert (await client.subscribe(OWN_CENTER))["type"] == "subscribed"
        subscribed = spent.since(mark)
    assert connected == (["authenticate_many"], 2), spent.queries
    # Neither the check nor the head (the hub's position in the stream) needs the database.
    assert subscribed == ([], 0), spent.queries


async def test_subscribe_needing_the_database_still_answers_hq_and_refuses_unknown_centers(ws):
    """HQ's center streams are checked for existence in a worker thread: allowed, or refused like a foreign one."""
    cookie = await in_thread(session_cookie, await ws.user(HQ))
    with cost.counting() as spent:
        client = await ws.connect(None, cookie=cookie, app=spent.app(application))
        mark = spent.mark()
        assert (await client.subscribe("deliveries:no-such-center"))["code"] == "forbidden"
        assert spent.since(mark)[0] == ["can_subscribe"]
    assert (await client.subscribe(OWN_CENTER))["type"] == "subscribed"


async def test_handshake_without_cookie_is_refused_with_no_hop_or_query(ws):
    with cost.counting() as spent:
        accepted, client = await ws.attempt(app=spent.app(application))
        assert not accepted
        assert await client.ended()
    assert (spent.hops, spent.queries) == ([], [])


async def test_handshake_after_a_password_change_is_refused(ws):
    user = await ws.user(DISPATCHER)
    cookie = await in_thread(session_cookie, user)
    assert (await ws.attempt(cookie=cookie))[0]

    def change_password():
        user.set_password("changed")
        user.save()

    await in_thread(change_password)
    accepted, client = await ws.attempt(cookie=cookie)
    assert not accepted
    assert await client.ended()


async def test_foreign_center_subscribe_is_refused_without_a_hop(ws):
    cookie = await in_thread(session_cookie, await ws.user(DISPATCHER))
    with cost.counting() as spent:
        client = await ws.connect(None, cookie=cookie, app=spent.app(application))
        mark = spent.mark()
        reply = await client.subscribe("deliveries:mapo")
        assert reply["type"] == "error" and reply["code"] == "forbidden"
        assert spent.since(mark) == ([], 0)


@pytest.mark.parametrize("username", [DISPATCHER, RIDER, CALLCENTER, HQ, ADMIN, "dispatch-mapo"])
def test_subscribe_verdict_in_memory_agrees_with_can_subscribe_for_every_kind(demo, username):
    """Wherever the loop answers a subscribe itself, it answers what the database-backed check answers."""
    from realtime import registry
    from realtime.streams import can_subscribe, parse_stream, subscribe_verdict

    user = user_named(username)
    other = user_named(RIDER if username != RIDER else DISPATCHER)
    rooms = {"center": ["gangnam", "mapo", "no-such-center"], "user": [str(user.pk), str(other.pk), "999999"]}
    rooms["pair"] = ["-".join(map(str, sorted((user.pk, other.pk))))]
    rooms["all"] = ["all"]
    decided = 0
    for kind in registry.kinds():
        for room in rooms[kind.rooms]:
            stream = parse_stream(f"{kind.namespace}:{room}")
            verdict = subscribe_verdict(access_for(user), stream)
            if verdict is not None:
                decided += 1
                assert verdict == can_subscribe(user, stream), str(stream)
    assert decided > 0
