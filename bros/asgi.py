"""ASGI entry point: Django for HTTP, the real-time protocol consumer for WebSocket."""

import gc
import os
from concurrent.futures import Future, ThreadPoolExecutor

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bros.settings")
django.setup(set_prefix=False)  # as django.core.asgi.get_asgi_application does


class OneHopASGIHandler(ASGIHandler):
    """Django's ASGI handler, running a request's whole middleware chain and view in one thread hop.

    Our views and most middleware are synchronous. In async mode Django runs each synchronous
    middleware's `process_request` and `process_response` in the request's thread and comes back to
    the event loop between them: 16 hops for a page, each handing the GIL to another thread
    and back, which the event loop of a busy process waits for. Here the chain is loaded in
    synchronous mode and run by one `sync_to_async` call (an async view in it, `/healthz`, is run
    back on the loop by Django's own adapter).
    """

    def __init__(self) -> None:
        BaseHandler.__init__(self)
        self.load_middleware(is_async=False)

    async def get_response_async(self, request):
        return await sync_to_async(self.get_response)(request)


django_asgi_app = OneHopASGIHandler()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from realtime.auth import SessionAuthMiddleware  # noqa: E402
from realtime.hub import get_hub, stop_hub  # noqa: E402
from realtime.origin import SameOriginValidator  # noqa: E402
from realtime.routing import websocket_urlpatterns  # noqa: E402


def with_server_send(app):
    """Put the server's own `send` in the scope, for the consumer's event frames.

    Channels' session middleware wrapped `send` to save sessions on HTTP responses; for WebSocket
    frames it only read two session flags — per frame, per socket, which showed in fan-out profiles.
    The handshake's authentication (`realtime.auth`) no longer wraps `send`; frames still take the
    server's own, so that no middleware added later can slow them down unnoticed.

    The key goes into the server's scope, not a copy: the server made that dict for this one
    connection and reads nothing we add (uvicorn's proxy-headers middleware edits it in place
    too), while a copy and this wrapper's coroutine lived as long as every socket (~1 kB per idle
    one, docs/benchmarks.md "Memory per idle connection"). Not `async`: the app's coroutine is
    returned for the server to await, so this adds no frame either.
    """

    def app_with_server_send(scope, receive, send):
        scope["server_send"] = send
        return app(scope, receive, send)

    return app_with_server_send


class _RequestThread(ThreadPoolExecutor):
    """One worker thread, which knows whether it still runs anything (the last call it took)."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="django-request")
        self._last: Future | None = None

    def submit(self, fn, /, *args, **kwargs) -> Future:
        self._last = super().submit(fn, *args, **kwargs)
        return self._last

    @property
    def idle(self) -> bool:
        return self._last is None or self._last.done()


class ReusedRequestThreads:
    """Run each HTTP request's synchronous Django code on a thread kept from earlier requests.

    Django's ASGI handler gives every request a thread of its own (asgiref's
    `ThreadSensitiveContext`), started at its first synchronous call and joined at its end by yet
    another new thread. Each `Thread.start()` blocks the event loop until the new thread runs, which
    needs the GIL: behind worker threads busy in the ORM that took 37 % of the loop's time in the
    shift benchmark (docs/benchmarks.md), with every socket waiting. Here the request's context gets
    an idle thread from a pool instead (Django's own context, inside, then adds nothing), so the
    rule stays the same — one thread per request at a time, its own database connection — without
    a thread start per request. A thread still running something when its request ends (a client
    that went away mid-view) is not reused; it ends when its work does.
    """

    def __init__(self, app, *, keep: int = 64):
        self.app = app
        self.keep = keep
        self._idle: list[_RequestThread] = []

    async def __call__(self, scope, receive, send):
        thread = self._idle.pop() if self._idle else _RequestThread()
        try:
            async with ThreadSensitiveContext(executor=thread):
                await self.app(scope, receive, send)
        finally:
            if thread.idle and len(self._idle) < self.keep:
                self._idle.append(thread)
            else:
                thread.shutdown(wait=False)


def tune_garbage_collector() -> None:
    """Keep the cyclic collector's full pass off the event loop's back for as long as it is safe.

    A full collection walks every tracked object: with 3,500 open sockets (~115 objects each) it
    holds the loop for ~300 ms, and under load CPython's default thresholds run one every 6-20 s,
    which were the shift's worst command-to-screen delays. The start-up heap (Django, the URL
    conf, the apps: never garbage) is frozen out of every later pass, and the oldest generation
    is collected only after `SERVER_GC_THRESHOLDS[2]` collections of the middle one.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*settings.SERVER_GC_THRESHOLDS)


async def lifespan(scope, receive, send):
    """Start this process's hub at once; on shutdown stop it: presence forgets the process at once."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            tune_garbage_collector()
            get_hub()  # in presence (and on the ops page) from the start, not from the first socket
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await stop_hub()
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # drop this process's live gauges from /metrics
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(os.getpid())
            await send({"type": "lifespan.shutdown.complete"})
            return


application = ProtocolTypeRouter(
    {
        "http": ReusedRequestThreads(django_asgi_app),
        "websocket": with_server_send(SameOriginValidator(SessionAuthMiddleware(URLRouter(websocket_urlpatterns)))),
        "lifespan": lifespan,
    }
)
