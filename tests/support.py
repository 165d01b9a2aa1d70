"""Helpers shared by several test modules."""

import re
from urllib.parse import quote

from django.utils import timezone


def database_url(db: dict) -> str:
    """A DATABASE_URL that django-environ parses back into the connection settings `db`.

    A Unix-socket host (the embedded PostgreSQL of `dev.py`) must be written as `//abs/path`:
    django-environ does not decode a percent-encoded host.
    """
    auth = quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        auth += ":" + quote(db["PASSWORD"], safe="")
    host = db["HOST"] or "localhost"
    host = f"/{host}" if host.startswith("/") else quote(host, safe="")
    port = f":{db['PORT']}" if db["PORT"] else ""
    return f"postgres://{auth}{'@' if auth else ''}{host}{port}/{quote(db['NAME'], safe='')}"


ORDER_FIELDS = {
    "customer_name": "Kim Minjun",
    "customer_phone": "010-2000-3000",
    "address": "Teheran-ro 1, Seoul",
    "items": [{"name": "Fried chicken", "qty": 1}],
}


def take_order(demo, *, center: str = "gangnam", actor=None, **fields):
    """Take an order (and its waiting delivery) for the center's first shop through the real service.

    `fields` override `ORDER_FIELDS`; `actor` None is the system.
    """
    from deliveries import services

    return services.create_order(actor=actor, shop_id=demo.shop(center).pk, **(ORDER_FIELDS | fields))


def make_token(name: str = "integration", *, commands=(), streams=(), revoked: bool = False):
    """Store an API token as the admin does (digest and hint only); return it with its raw secret."""
    from core.models import ApiToken

    raw, digest = ApiToken.generate()
    token = ApiToken.objects.create(
        name=name,
        digest=digest,
        hint=raw[:12],
        commands=list(commands),
        streams=list(streams),
        revoked_at=timezone.now() if revoked else None,
    )
    return token, raw


def bearer(raw: str) -> dict:
    return {"Authorization": f"Bearer {raw}"}


_CSRF_INPUT = re.compile(rb'name="csrfmiddlewaretoken" value="[^"]+"')


def without_csrf(content: bytes) -> bytes:
    """A page's HTML without its CSRF token (the shell's logout form gets a fresh one each time)."""
    return _CSRF_INPUT.sub(b"", content)
