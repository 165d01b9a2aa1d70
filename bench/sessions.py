"""Logged-in sessions written straight into Django's session table, for load benchmarks.

Each row is what `django.contrib.auth.login` would write for the user (ModelBackend, the user's
session auth hash), without a password check per login: logging thousands of accounts in through
the form would spend minutes hashing. Needs Django set up (imports lazily, so a benchmark can
load this file into a process that set up another checkout's Django).
"""

from __future__ import annotations

AUTH_BACKEND = "django.contrib.auth.backends.ModelBackend"


def login_sessions(users) -> list[str]:
    """One valid login session per entry of `users` (a user may appear more than once); their keys."""
    import datetime as dt

    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session
    from django.utils import timezone
    from django.utils.crypto import get_random_string

    expire = timezone.now() + dt.timedelta(days=1)
    store = SessionStore()
    rows, keys = [], []
    for user in users:
        key = get_random_string(32, "abcdefghijklmnopqrstuvwxyz0123456789")
        data = {
            SESSION_KEY: str(user.pk),
            BACKEND_SESSION_KEY: AUTH_BACKEND,
            HASH_SESSION_KEY: user.get_session_auth_hash(),
        }
        rows.append(Session(session_key=key, session_data=store.encode(data), expire_date=expire))
        keys.append(key)
    Session.objects.bulk_create(rows, batch_size=1000)
    return keys
