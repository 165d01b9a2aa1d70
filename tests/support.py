"""Helpers shared by the tests that start real server processes."""

from urllib.parse import quote


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
