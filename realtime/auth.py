"""WebSocket handshake authentication: session, user, access version and Access in ONE thread hop.

It replaces Channels' `AuthMiddlewareStack` for `/ws/v1/` (issue 13, connection storms). Channels
reads the session and the user in one `database_sync_to_async` call on the process's single
thread-sensitive thread, and the consumer then read the access version from Redis and the Access
in a second one: every handshake of the process queued twice on one thread, behind every other.
Here one call, in the loop's executor (`thread_sensitive=False`, like the hub's reads), does:

1. the session row (one query; an expired or unknown key is anonymous),
2. the user's access version from Redis, read BEFORE the access so that a change committed in
   between is caught by the next heartbeat's re-check (realtime.consumers.recheck_access),
3. the user with their role, centers and rider row (one query, `core.access.user_with_access`),
   refused like Django's `get_user`: inactive user (ModelBackend), a backend no longer in
   AUTHENTICATION_BACKENDS, or a session hash that no longer matches the user's password (the
   session is then flushed, as Channels and Django do).

Nothing here holds a transaction across calls, and `database_sync_to_async` returns the thread's
connection to the pool after the call (CONN_MAX_AGE = 0), so running in any executor thread is as
safe as in the thread-sensitive one. A custom backend's `get_user` is honoured (then the Access is
read with `access_for`, one or two queries more).
"""

from __future__ import annotations

import logging
from importlib import import_module

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model, load_backend
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ValidationError
from django.http.cookie import parse_cookie
from django.utils.crypto import constant_time_compare
from redis.exceptions import RedisError

from core.access import access_for, user_with_access
from core.access_versions import current_version

logger = logging.getLogger(__name__)


def session_key_of(scope) -> str | None:
    """The session cookie's value from the handshake's first `Cookie` header (as Channels reads it)."""
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            return parse_cookie(value.decode("latin1")).get(settings.SESSION_COOKIE_NAME) or None
    return None


def _read_version(user_id) -> int:
    try:
        return current_version(user_id)
    except RedisError:  # as before: version 0, so the next re-check re-reads this user's access
        logger.warning("access version unreadable for user %s", user_id, exc_info=True)
        return 0


def _plain_model_backend(backend) -> bool:
    """Whether the backend reads users exactly like ModelBackend (then one joined query does it)."""
    cls = type(backend)
    return cls.get_user is ModelBackend.get_user and cls.user_can_authenticate is ModelBackend.user_can_authenticate


def authenticate(session_key: str | None) -> tuple[object | None, int]:
    """The session's active user with its Access cached on it (or None), and its access version (sync).

    Two queries for a valid session (session row; user + access), one for an unknown one.
    """
    if not session_key:
        return None, 0
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    try:
        user_id = get_user_model()._meta.pk.to_python(session[SESSION_KEY])
        backend_path = session[BACKEND_SESSION_KEY]
    except (KeyError, ValidationError):
        return None, 0
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None, 0
    backend = load_backend(backend_path)
    version = _read_version(user_id)
    if _plain_model_backend(backend):
        user = user_with_access(user_id)
        if user is not None and not backend.user_can_authenticate(user):
            user = None
    else:
        user = backend.get_user(user_id)
    if user is None:
        return None, 0
    if hasattr(user, "get_session_auth_hash"):
        session_hash = session.get(HASH_SESSION_KEY)
        if not (session_hash and constant_time_compare(session_hash, user.get_session_auth_hash())):
            session.flush()  # the password changed since this login: the session is void
            return None, 0
    access_for(user)  # cached on the user already on the joined path; read here otherwise
    return user, version


class SessionAuthMiddleware:
    """Put `user` (AnonymousUser when not logged in) and `access_version` in a WebSocket's scope.

    In the scope itself, not a copy (as `bros.asgi.with_server_send` does): it is this connection's
    alone, and a copy lived as long as the socket (~600 B per idle one).
    """

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        session_key = session_key_of(scope)
        user, version = None, 0
        if session_key:  # no cookie, no thread hop
            user, version = await database_sync_to_async(authenticate, thread_sensitive=False)(session_key)
        scope["user"], scope["access_version"] = user or AnonymousUser(), version
        return await self.inner(scope, receive, send)
