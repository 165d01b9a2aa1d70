"""asyncio.Event and asyncio.Queue for objects that exist once per idle socket.

asyncio's Event allocates a `deque` of waiters up front, and its Queue three deques and an Event:
about 630 bytes per deque (one 64-slot block each) whether anything ever waits or not. An idle
socket held eight of them, 5 kB of its ~32 kB (docs/benchmarks.md, "Memory per idle
connection"). These keep only the calls the socket's code makes, and allocate when something
actually waits or is queued.
"""

from __future__ import annotations

import asyncio


class Flag:
    """asyncio.Event's `set`, `clear`, `is_set` and `wait`; waiters are a list made on first wait."""

    __slots__ = ("_set", "_waiters")

    def __init__(self, value: bool = False):
        self._set = value
        self._waiters: list[asyncio.Future] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(True)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


class Inbox:
    """asyncio.Queue's `put_nowait`, `get`, `empty` and `qsize`, unbounded, for ONE reader.

    uvicorn's WebSocket protocol queues what the client sends for the app's `receive` (one reader
    by the ASGI contract) and pauses reading while anything is queued, so the queue is nearly
    always empty or holds one message: a list serves, and it exists only while it holds something.
    """

    __slots__ = ("_items", "_getter")

    def __init__(self):
        self._items: list | None = None
        self._getter: asyncio.Future | None = None

    def put_nowait(self, item) -> None:
        if self._items is None:
            self._items = [item]
        else:
            self._items.append(item)
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    async def get(self):
        while not self._items:
            if self._getter is not None:
                raise RuntimeError("Inbox has one reader")
            self._getter = asyncio.get_running_loop().create_future()
            try:
                await self._getter
            finally:
                self._getter = None
        items = self._items
        item = items.pop(0)
        if not items:
            self._items = None
        return item
