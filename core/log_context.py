"""Structured logs: every record carries the id of the request or WebSocket connection it belongs to.

`RequestIdMiddleware` gives each HTTP request an id (a sane `X-Request-ID` from the proxy, else a
new one), answers it in the response's `X-Request-ID`, and keeps it in a context variable for the
request; the WebSocket consumer does the same with its connection id. `ContextFilter`, on the
handlers in settings.LOGGING, copies both onto each record (`-` outside a request or connection),
and `JsonFormatter` writes a record as one JSON object per line (LOG_FORMAT=json).

Context variables follow the request into `sync_to_async` threads and the connection into the
tasks it starts, so a log line deep in a service still names its request.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
from contextvars import ContextVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.utils.log import AdminEmailHandler

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
connection_id: ContextVar[str | None] = ContextVar("connection_id", default=None)

# What we accept from a proxy: short, and safe to write into a log line or a header.
_INCOMING_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def new_request_id() -> str:
    return secrets.token_hex(8)


class RequestIdMiddleware:
    """Give each request an id for its log lines and echo it as `X-Request-ID` (sync and async)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    @staticmethod
    def _id_for(request) -> str:
        incoming = request.headers.get("X-Request-ID", "")
        return incoming if _INCOMING_ID.fullmatch(incoming) else new_request_id()

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        rid = request.request_id = self._id_for(request)
        token = request_id.set(rid)
        try:
            response = self.get_response(request)
        finally:
            request_id.reset(token)
        response["X-Request-ID"] = rid
        return response

    async def _acall(self, request):
        rid = request.request_id = self._id_for(request)
        token = request_id.set(rid)
        try:
            response = await self.get_response(request)
        finally:
            request_id.reset(token)
        response["X-Request-ID"] = rid
        return response


class ContextFilter(logging.Filter):
    """Add `request_id` and `connection_id` to every record (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get() or "-"
        record.connection_id = connection_id.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, ids, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
            "connection_id": getattr(record, "connection_id", "-"),
            "process": record.process,
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class RateLimitedAdminEmailHandler(AdminEmailHandler):
    """Django's error e-mails, at most one per message per `per_message` seconds and `per_hour` in all.

    A fault that repeats (a bug hit by every request, a dependency down) sends one mail, not one per
    occurrence. The limit is per process and in memory, so it works while Redis is the thing that
    is down; the log keeps every occurrence.
    """

    def __init__(self, *args, per_message: float = 600.0, per_hour: int = 20, **kwargs):
        super().__init__(*args, **kwargs)
        self.per_message = per_message
        self.per_hour = per_hour
        self._last_sent: dict[tuple[str, str], float] = {}
        self._sent_times: list[float] = []
        self._lock = threading.Lock()

    def allow(self, record: logging.LogRecord, now: float | None = None) -> bool:
        """Whether this record may be mailed now (and, if so, count it as mailed)."""
        now = time.monotonic() if now is None else now
        key = (record.name, str(record.msg))
        with self._lock:
            self._sent_times = [t for t in self._sent_times if now - t < 3600]
            last = self._last_sent.get(key)
            if last is not None and now - last < self.per_message:
                return False
            if len(self._sent_times) >= self.per_hour:
                return False
            if len(self._last_sent) > 1000:  # bounded: forget the oldest messages
                for old in sorted(self._last_sent, key=self._last_sent.get)[:500]:
                    del self._last_sent[old]
            self._last_sent[key] = now
            self._sent_times.append(now)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        if self.allow(record):
            super().emit(record)
