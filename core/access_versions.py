"""A per-user access version in Redis, bumped whenever a user's role, centers or activity change.

Open sockets remember the version they authorized with. Once per heartbeat each server process
reads the versions of all its connected users in one round trip (`HMGET`) and re-checks the
subscriptions of only those whose version moved (realtime.consumers), so nobody keeps reading a
stream they lost until they happen to reconnect. Whatever changes access calls `access_changed`:
the admin's save paths for users, staff profiles and riders.
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction

from core.redis_connection import get_redis


def versions_key() -> str:
    """The Redis hash of user id → access version (a missing user is version 0)."""
    return f"{settings.REDIS_PREFIX}:access-versions"


def parse_version(raw: bytes | str | None) -> int:
    return int(raw) if raw else 0


def access_changed(*user_ids: int | None) -> None:
    """Bump the users' access versions once the current transaction commits (sockets re-read then)."""
    ids = sorted({pk for pk in user_ids if pk is not None})
    if not ids:
        return

    def bump() -> None:
        pipe = get_redis().pipeline(transaction=False)
        for pk in ids:
            pipe.hincrby(versions_key(), str(pk), 1)
        pipe.execute()

    transaction.on_commit(bump)


def current_versions(user_ids) -> list[int]:
    """The users' access versions now, in their order, in one round trip (sync; raises RedisError)."""
    if not user_ids:
        return []
    return [parse_version(raw) for raw in get_redis().hmget(versions_key(), [str(pk) for pk in user_ids])]
