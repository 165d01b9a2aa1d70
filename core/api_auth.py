"""Who is calling the HTTP API (a session user or an API token) and command idempotency.

Browsers use the Django session (CSRF checked on writes); integrations send
`Authorization: Bearer <token>`. Tokens are stored hashed and scoped to commands and streams.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from functools import wraps

from django.core.exceptions import PermissionDenied
from django.db import connection, transaction
from django.http import HttpRequest
from django.utils import timezone
from ninja import Status
from ninja.security import HttpBearer, SessionAuth

from core.access import token_allows
from core.actors import TokenActor
from core.models import ApiToken, IdempotencyRecord, hash_token

LAST_USED_GRANULARITY = timedelta(minutes=1)


class TokenAuth(HttpBearer):
    """`Authorization: Bearer <token>`: an unrevoked API token, its last use recorded."""

    def authenticate(self, request: HttpRequest, token: str) -> ApiToken | None:
        api_token = ApiToken.objects.filter(digest=hash_token(token), revoked_at__isnull=True).first()
        if api_token is None:
            return None
        now = timezone.now()
        # Recording every use would make each call a write; a minute's precision is plenty.
        if api_token.last_used_at is None or now - api_token.last_used_at > LAST_USED_GRANULARITY:
            ApiToken.objects.filter(pk=api_token.pk).update(last_used_at=now)
        return api_token


class ActiveSessionAuth(SessionAuth):
    """The Django session, with CSRF enforced on unsafe methods.

    Without a logged-in user this answers "not authenticated" before any CSRF check, so an
    integration whose token was refused is told 401, not about CSRF.
    """

    def __call__(self, request: HttpRequest):
        if not request.user.is_authenticated:
            return None
        return super().__call__(request)

    def authenticate(self, request: HttpRequest, key: str | None):
        user = request.user
        return user if user.is_authenticated and user.is_active else None


API_AUTH = [TokenAuth(), ActiveSessionAuth(csrf=True)]


@dataclass(frozen=True)
class Caller:
    """The user acting, or the token acting for an integration (then `user` is None)."""

    user: object | None
    token: ApiToken | None

    @property
    def owner(self) -> str:
        return f"token:{self.token.pk}" if self.token else f"user:{self.user.pk}"

    @property
    def actor(self):
        """Who the services see acting: the user, or the token as a `TokenActor` (never None)."""
        return TokenActor.of(self.token) if self.token else self.user

    @property
    def via(self) -> str:
        return f"API token {self.token.name}" if self.token else ""

    def require_token_scope(self, command: str, stream: str) -> None:
        """Refuse a token call outside the token's commands or streams (user calls pass).

        Only for what no service authorizes (publishing); commands are authorized by the services.
        """
        if self.token is None:
            return
        if command not in self.token.commands or not token_allows(self.token.streams, stream):
            raise PermissionDenied("This token is not allowed to do that.")


def caller_of(request: HttpRequest) -> Caller:
    if isinstance(request.auth, ApiToken):
        return Caller(user=None, token=request.auth)
    return Caller(user=request.auth, token=None)


MAX_KEY_LENGTH = 200
_CLAIM_KEY = f"""
    INSERT INTO {IdempotencyRecord._meta.db_table} (owner, key, fingerprint, status_code, body, created_at)
    VALUES (%s, %s, %s, 0, 'null', now())
    ON CONFLICT (owner, key) DO NOTHING
    RETURNING id
"""


class IdempotencyKeyError(Exception):
    """The Idempotency-Key header is malformed or reused for a different request."""


def request_fingerprint(request: HttpRequest) -> str:
    """A hash of the method, path and body; a JSON body by its parsed value, so whitespace and key
    order do not make a retry look like a different request."""
    text = request.body.decode(errors="replace")
    try:
        body = ["json", json.loads(text)]
    except ValueError:
        body = ["text", text]
    canonical = json.dumps([request.method, request.path, body], sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def run_once(*, owner: str, key: str, fingerprint: str, run) -> tuple[int, object]:
    """Run `run()` (returning `(status_code, json-able body)`) at most once per `(owner, key)`.

    The key is claimed inside the command's transaction: a concurrent retry blocks on the
    unique key until the first attempt commits, then returns its stored result. A refused
    command (an exception) rolls back with its claim, so nothing is recorded and a retry runs
    afresh. The same key for another request (`fingerprint`) raises `IdempotencyKeyError`.
    Used by the API's `idempotent` and by the call-center intake form.
    """
    if not key or len(key) > MAX_KEY_LENGTH:
        raise IdempotencyKeyError(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters.")
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(_CLAIM_KEY, [owner, key, fingerprint])
            claimed = cursor.fetchone() is not None
        if not claimed:
            record = IdempotencyRecord.objects.get(owner=owner, key=key)
            if record.fingerprint != fingerprint:
                raise IdempotencyKeyError("This Idempotency-Key was used for a different request.")
            return record.status_code, record.body
        status_code, body = run()
        IdempotencyRecord.objects.filter(owner=owner, key=key).update(
            fingerprint=fingerprint, status_code=status_code, body=body
        )
    return status_code, body


def idempotent(endpoint):
    """Run a command endpoint at most once per `Idempotency-Key`; a retry gets the first result.

    See `run_once`. The endpoint must return `(status_code, json-able body)`.
    """

    @wraps(endpoint)
    def wrapper(request: HttpRequest, *args, **kwargs):
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return Status(*endpoint(request, *args, **kwargs))
        status_code, body = run_once(
            owner=caller_of(request).owner,
            key=key,
            fingerprint=request_fingerprint(request),
            run=lambda: endpoint(request, *args, **kwargs),
        )
        return Status(status_code, body)

    return wrapper
