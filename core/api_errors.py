"""The error bodies of the HTTP API (protocol.md §5.2), for the routes' documented responses.

Each route lists the error statuses it can answer in its `response=` map with `errors(...)`, so
`/api/v1/openapi.json` tells clients every status they may get (the schemathesis run checks it).
The bodies themselves are made by the exception handlers in `bros/api.py`.
"""

from __future__ import annotations

from typing import Any

from ninja import Schema


class ErrorOut(Schema):
    detail: str


class FieldErrorOut(Schema):
    loc: list[str | int]
    msg: str
    type: str


class InvalidOut(Schema):
    """422: a list of problems by field; a bad Idempotency-Key is a single string."""

    detail: list[FieldErrorOut] | str


class ConflictOut(Schema):
    """409: refused by the entity's state, with the entity as it is now."""

    detail: str
    code: str
    current: dict[str, Any] | None
    changed_by: dict[str, Any] | None = None


class RateLimitedOut(Schema):
    detail: str
    code: str


ERROR_BODIES: dict[int, type[Schema]] = {
    400: ErrorOut,  # the body is not (strict) JSON
    401: ErrorOut,  # no valid session or token
    403: ErrorOut,
    404: ErrorOut,
    409: ConflictOut,
    413: ErrorOut,
    422: InvalidOut,
    429: RateLimitedOut,
    503: ErrorOut,  # Redis is down and the request needs it; with Retry-After
}

# Every endpoint may be refused these; every endpoint with a body may also be refused these.
ANY = (401,)
WITH_BODY = (400, 401, 413, 422)


def errors(*statuses: int) -> dict[int, type[Schema]]:
    """The documented error responses for these statuses, to merge into a route's `response=` map."""
    return {status: ERROR_BODIES[status] for status in sorted(set(statuses))}
