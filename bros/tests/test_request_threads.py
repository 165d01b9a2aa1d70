"""HTTP requests' synchronous code runs on reused threads (bros.asgi.ReusedRequestThreads).

Django's ASGI handler alone starts a thread per request and another to join it; each start
blocks the event loop until the new thread gets the GIL (docs/benchmarks.md, shift profile).
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import ThreadSensitiveContext, sync_to_async

from bros.asgi import ReusedRequestThreads, application


async def call(app, path: str = "/accounts/login/") -> tuple[int, bytes]:
    """One GET through an ASGI app; returns the status and body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    sent: list[dict] = []
    request_sent = False

    async def receive():
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays connected

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def thread_recording_app(seen: list[threading.Thread], *, calls: int = 2, gate: asyncio.Event | None = None):
    """An app that, as Django's handler does, makes `calls` thread-sensitive sync calls in a
    `ThreadSensitiveContext` of its own, recording the thread of each."""

    async def app(scope, receive, send):
        async with ThreadSensitiveContext():
            for _ in range(calls):
                seen.append(await sync_to_async(threading.current_thread)())
                if gate is not None:
                    await gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


async def test_sequential_requests_run_on_one_reused_thread():
    seen: list[threading.Thread] = []
    app = ReusedRequestThreads(thread_recording_app(seen))
    for _ in range(5):
        await call(app)
    assert len(seen) == 10
    assert len(set(seen)) == 1
    assert threading.current_thread() not in seen  # never the event loop's thread


async def test_concurrent_requests_get_a_thread_each_and_keep_it():
    seen_a: list[threading.Thread] = []
    seen_b: list[threading.Thread] = []
    gate = asyncio.Event()
    inner = {"a": thread_recording_app(seen_a, gate=gate), "b": thread_recording_app(seen_b, gate=gate)}

    async def app(scope, receive, send):
        await inner[scope["path"].strip("/")](scope, receive, send)

    threads = ReusedRequestThreads(app)
    both = asyncio.gather(call(threads, "/a/"), call(threads, "/b/"))
    while len(seen_a) + len(seen_b) < 2:
        await asyncio.sleep(0.01)
    gate.set()
    await both
    assert len(set(seen_a)) == 1 and len(set(seen_b)) == 1  # each request's calls on one thread
    assert set(seen_a) != set(seen_b)  # and never the other request's thread at the same time


async def test_a_thread_still_busy_when_its_request_ends_is_not_reused():
    release = threading.Event()
    seen: list[threading.Thread] = []

    async def abandoning_app(scope, receive, send):
        # Starts sync work and returns without waiting for it, as a request cancelled mid-view does.
        asyncio.ensure_future(sync_to_async(release.wait)())
        await asyncio.sleep(0.05)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = ReusedRequestThreads(abandoning_app)
    await call(app)
    busy = {t for t in threading.enumerate() if t.name.startswith("django-request")}
    app.app = thread_recording_app(seen)
    await call(app)
    release.set()
    assert busy and seen and seen[0] not in busy  # the next request did not queue behind it


@pytest.mark.django_db(transaction=True)
async def test_django_pages_start_no_thread_per_request(monkeypatch):
    """Through the real application: after the first request, more requests start no thread."""
    status, body = await call(application)
    assert status == 200 and b"<form" in body
    started: list[threading.Thread] = []
    start = threading.Thread.start

    def counting_start(thread):
        started.append(thread)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    for _ in range(10):
        status, _ = await call(application)
        assert status == 200
    assert started == []


@pytest.mark.django_db(transaction=True)
async def test_a_django_request_crosses_to_its_thread_a_few_times_not_once_per_middleware(monkeypatch):
    """The middleware chain and the view run in one hop (bros.asgi.OneHopASGIHandler); Django's
    request signals and the response's close make the others."""
    from asgiref.current_thread_executor import CurrentThreadExecutor

    from bros import asgi

    calls: list[object] = []

    def counting(executor_class):
        submit = executor_class.submit

        def counting_submit(self, fn, /, *args, **kwargs):
            calls.append(fn)
            return submit(self, fn, *args, **kwargs)

        monkeypatch.setattr(executor_class, "submit", counting_submit)

    counting(asgi._RequestThread)  # loop -> the request's thread
    counting(CurrentThreadExecutor)  # a sync middleware's thread -> the loop and back (async mode)
    status, _ = await call(application)
    assert status == 200
    assert 1 <= len(calls) <= 4, calls
