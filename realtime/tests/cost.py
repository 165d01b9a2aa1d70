"""Count the database queries and sync→async thread hops made on behalf of some code, in every thread.

`CaptureQueriesContext` sees only the calling thread's connection, but the WebSocket path runs its
queries in worker threads. Here both counts follow the context instead: asgiref runs a
`sync_to_async` function in a copy of the caller's contextvars, and asyncio tasks inherit them, so
what code inside `with cost.counting() as spent:` does, and what the connections of an app wrapped
by `spent.app(app)` do, is counted wherever it runs, while the hub's own background work (started
in an empty context, see `realtime.hub.get_hub`) is not. Counting happens only inside the block.
Used by the handshake tests and by `bench/connect.py`.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from dataclasses import dataclass, field

from asgiref.sync import SyncToAsync
from django.db.backends import utils

_counter: contextvars.ContextVar[Cost | None] = contextvars.ContextVar("bros_cost_counter", default=None)
_lock = threading.Lock()
_installed = 0
_original_execute = utils.CursorWrapper._execute_with_wrappers
_original_call = SyncToAsync.__call__


@dataclass
class Cost:
    queries: list[str] = field(default_factory=list)
    hops: list[str] = field(default_factory=list)

    def add_query(self, sql: str) -> None:
        with _lock:
            self.queries.append(sql)

    def add_hop(self, name: str) -> None:
        with _lock:
            self.hops.append(name)

    def app(self, app):
        """`app` (ASGI) with its connections counted here (asgiref's communicator runs each in an empty context)."""

        async def counted(scope, receive, send):
            _counter.set(self)
            return await app(scope, receive, send)

        return counted

    def since(self, mark: tuple[int, int]) -> tuple[list[str], int]:
        """The hops and the number of queries since `mark` (a `mark()`)."""
        return self.hops[mark[0] :], len(self.queries) - mark[1]

    def mark(self) -> tuple[int, int]:
        return len(self.hops), len(self.queries)


def _execute_with_wrappers(self, sql, params, many, executor):
    cost = _counter.get()
    if cost is not None:
        cost.add_query(sql)
    return _original_execute(self, sql, params, many, executor)


async def _call(self, *args, **kwargs):
    cost = _counter.get()
    if cost is not None:
        func = getattr(self, "func", None)
        cost.add_hop(getattr(func, "__qualname__", repr(func)))
    return await _original_call(self, *args, **kwargs)


@contextlib.contextmanager
def counting():
    """Count what is done inside the block and in the tasks and threads it starts; yields a Cost."""
    global _installed
    with _lock:
        if _installed == 0:
            utils.CursorWrapper._execute_with_wrappers = _execute_with_wrappers
            SyncToAsync.__call__ = _call
        _installed += 1
    cost = Cost()
    token = _counter.set(cost)
    try:
        yield cost
    finally:
        _counter.reset(token)
        with _lock:
            _installed -= 1
            if _installed == 0:
                utils.CursorWrapper._execute_with_wrappers = _original_execute
                SyncToAsync.__call__ = _original_call
