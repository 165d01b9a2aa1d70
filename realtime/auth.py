"""WebSocket handshake authentication: session, user, access version and Access in ONE thread hop.

It replaces Channels' `AuthMiddlewareStack` for `/ws/v1/` (issue 13, connection storms). Channels
reads the session and the user in one `database_sync_to_async` call on the process's single
thread-sensitive thread, and the consumer then read the access version from Redis and the Access
in a second one: every handshake of the process queued twice on one thread, behind every other.
Here one call, in the loop's executor (`thread_sensitive=False`, like the hub's reads), does, for
a whole batch of handshakes (`_Batches`: those that arrived while the previous call ran):

1. the session rows (one query; an expired or unknown key is anonymous; the database engine's
   rows are loaded together, other engines' sessions load themselves as before),
2. the users' access versions from Redis (one HMGET), read BEFORE the access so that a change
   committed in between is caught by the next heartbeat's re-check (realtime.consumers.recheck_access),
3. the users with their role, centers and rider row (one query, `core.access.users_with_access`),
   refused like Django's `get_user`: inactive user (ModelBackend), a backend no longer in
   AUTHENTICATION_BACKENDS, or a session hash that no longer matches the user's password (the
   session is then flushed, as Channels and Django do).

Not one SQL statement for session and user: the user id is inside the signed (and maybe
compressed) session data, which only Python can check and decode.

Nothing here holds a transaction across calls, and `database_sync_to_async` returns the thread's
connection to the pool after the call (CONN_MAX_AGE = 0), so running in any executor thread is as
safe as in the thread-sensitive one. A custom backend's `get_user` is honoured (then the Access is
read with `access_for`, one or two queries more).
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import logging
from importlib import import_module

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model, load_backend
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.backends import db
from django.core.exceptions import ValidationError
from django.http.cookie import parse_cookie
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from redis.exceptions import RedisError

from core.access import access_for, users_with_access
from core.access_versions import current_versions

logger = logging.getLogger(__name__)


def session_key_of(scope) -> str | None:
    """The session cookie's value from the handshake's first `Cookie` header (as Channels reads it)."""
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            return parse_cookie(value.decode("latin1")).get(settings.SESSION_COOKIE_NAME) or None
    return None


def _read_versions(user_ids) -> list[int]:
    try:
        return current_versions(user_ids)
    except RedisError:  # as before: version 0, so the next re-check re-reads these users' access
        logger.warning("access versions unreadable for users %s", user_ids, exc_info=True)
        return [0] * len(user_ids)


def _plain_model_backend(backend) -> bool:
    """Whether the backend reads users exactly like ModelBackend (then one joined query does it)."""
    cls = type(backend)
    return cls.get_user is ModelBackend.get_user and cls.user_can_authenticate is ModelBackend.user_can_authenticate


def _reads_like_db_backend(store) -> bool:
    """Whether the session store loads exactly like Django's database backend (then one query loads many)."""
    cls = type(store)
    return cls.load is db.SessionStore.load and cls._get_session_from_db is db.SessionStore._get_session_from_db


def _load_sessions(stores) -> None:
    """Load the database sessions among `stores` in ONE query, as each one's `load()` would have.

    Like `db.SessionStore.load`: only unexpired rows, decoded by the store's own `decode` (bad
    signature or data → empty); a missing or expired row is an empty session. Other engines (cache,
    cached_db, signed cookies, a project's own) are left to load themselves on first access.
    """
    stores = [store for store in stores if store.session_key and _reads_like_db_backend(store)]
    if not stores:
        return
    keys = list({store.session_key for store in stores})  # a session may come with several handshakes
    rows = stores[0].model.objects.filter(session_key__in=keys, expire_date__gt=timezone.now())
    found = dict(rows.values_list("session_key", "session_data"))
    for store in stores:
        data = found.get(store.session_key)
        store._session_cache = store.decode(data) if data is not None else {}


def _claim(store):
    """(store, user id, backend) of a session that names a user of a configured backend, else None."""
    if store is None:
        return None
    try:
        user_id = get_user_model()._meta.pk.to_python(store[SESSION_KEY])
        backend_path = store[BACKEND_SESSION_KEY]
    except (KeyError, ValidationError):
        return None
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None
    return store, user_id, load_backend(backend_path)


def _user_of(claim, users: dict, handed_out: set):
    """The claim's user as Django's `get_user` would accept it (a fresh object per connection), or None."""
    store, user_id, backend = claim
    if _plain_model_backend(backend):
        user = users.get(user_id)
        if user is not None and user_id in handed_out:
            user = copy.copy(user)  # one object per connection, as before
        handed_out.add(user_id)
        if user is not None and not backend.user_can_authenticate(user):
            return None
    else:
        user = backend.get_user(user_id)
    if user is not None and hasattr(user, "get_session_auth_hash"):
        session_hash = store.get(HASH_SESSION_KEY)
        if not (session_hash and constant_time_compare(session_hash, user.get_session_auth_hash())):
            store.flush()  # the password changed since this login: the session is void
            return None
    if user is not None:
        access_for(user)  # cached on the user already on the joined path; read here otherwise
    return user


def _isolated(fn, *args):
    """fn(*args), or the exception it raised: one session's failure is its handshake's alone."""
    try:
        return fn(*args)
    except Exception as exc:
        return exc


def authenticate_many(session_keys) -> list[tuple[object | None, int] | Exception]:
    """For each session key: its active user with the Access cached on it (or None), and the access version (sync).

    A batch of handshakes costs what one does: one query for the session rows, one Redis round
    trip for the versions, one query for the users with their access (`users_with_access`); only
    a session flushed for a stale hash or a custom backend's `get_user` add queries. Each
    handshake gets its own user object, refused like Django's `get_user` refuses it. What fails
    for one session only (a custom backend or session engine raising) is returned in its place;
    what fails for all (the database, Redis is tolerated) raises.
    """
    engine = import_module(settings.SESSION_ENGINE)
    stores = [engine.SessionStore(key) if key else None for key in session_keys]
    _load_sessions([store for store in stores if store is not None])
    claims = [_isolated(_claim, store) for store in stores]
    valid = [claim for claim in claims if isinstance(claim, tuple)]
    user_ids = list(dict.fromkeys(user_id for _, user_id, _ in valid))
    versions = dict(zip(user_ids, _read_versions(user_ids), strict=True))  # before the access, see above
    plain = [user_id for _, user_id, backend in valid if _plain_model_backend(backend)]
    users = users_with_access(plain) if plain else {}
    results, handed_out = [], set()
    for claim in claims:
        user = _isolated(_user_of, claim, users, handed_out) if isinstance(claim, tuple) else claim
        if isinstance(user, Exception):
            results.append(user)
        else:
            results.append((None, 0) if user is None else (user, versions[claim[1]]))
    return results


def authenticate(session_key: str | None) -> tuple[object | None, int]:
    """The session's active user with its Access cached on it (or None), and its access version (sync).

    Two queries for a valid session (session row; user + access), one for an unknown one.
    """
    result = authenticate_many([session_key])[0]
    if isinstance(result, Exception):
        raise result
    return result


class _Batches:
    """Single-flight batching of one event loop's handshakes: at most one lookup in flight.

    The first handshake starts a lookup at once (no waiting: alone, it costs what it did). Those
    arriving while it runs queue, and the next lookup reads them all together: one thread hop,
    two queries and one Redis round trip per batch, whatever its size (up to MAX). A storm of
    distinct sessions then pays per batch, not per connection, for the hop, the pool checkout and
    the round trips. Each batch runs in the context of its first handshake (so its queries are
    counted there, realtime/tests/cost.py).
    """

    MAX = 256

    def __init__(self, loop):
        self.loop = loop
        self.pending: list[tuple[str, asyncio.Future, contextvars.Context]] = []
        self.running = False
        self.task: asyncio.Task | None = None  # a reference while it runs: the loop keeps only weak ones

    def submit(self, session_key: str) -> asyncio.Future:
        future = self.loop.create_future()
        self.pending.append((session_key, future, contextvars.copy_context()))
        if not self.running:
            self._start()
        return future

    def _start(self) -> None:
        batch, self.pending = self.pending[: self.MAX], self.pending[self.MAX :]
        self.running = True
        self.task = self.loop.create_task(self._run(batch), context=batch[0][2])

    async def _run(self, batch) -> None:
        futures = [future for _, future, _ in batch]
        try:
            keys = [key for key, _, _ in batch]
            results = await database_sync_to_async(authenticate_many, thread_sensitive=False)(keys)
        except asyncio.CancelledError:  # the loop is shutting down: so are the handshakes
            for future in futures:
                future.cancel()
            raise
        except Exception as exc:  # each handshake of the batch fails as its own lookup would have
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            self.running = False
            if self.pending:
                self._start()
        for future, result in zip(futures, results, strict=True):
            if future.done():  # a handshake cancelled meanwhile (client gone) is skipped
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


class SessionAuthMiddleware:
    """Put `user` (AnonymousUser when not logged in) and `access_version` in a WebSocket's scope.

    In the scope itself, not a copy (as `bros.asgi.with_server_send` does): it is this connection's
    alone, and a copy lived as long as the socket (~600 B per idle one).
    """

    def __init__(self, inner):
        self.inner = inner
        self._batches: _Batches | None = None

    def _batches_of(self, loop) -> _Batches:
        if self._batches is None or self._batches.loop is not loop:
            self._batches = _Batches(loop)
        return self._batches

    async def __call__(self, scope, receive, send):
        session_key = session_key_of(scope)
        user, version = None, 0
        if session_key:  # no cookie, no thread hop
            user, version = await self._batches_of(asyncio.get_running_loop()).submit(session_key)
        scope["user"], scope["access_version"] = user or AnonymousUser(), version
        return await self.inner(scope, receive, send)
