"""Real ASGI server processes (uvicorn, daphne) on the test database and Redis, and clients for them.

`live_servers(n, kind=..., **env)` starts `n` server subprocesses and waits until they answer
HTTP. They share the test database (so tests use `transactional_db` / `demo_tx`: committed data
is what other processes see), the tests' `SECRET_KEY` (sessions made here validate there) and a
Redis prefix of the test's own, so channels and presence of other tests never mix in. Servers
are stopped (and waited for) before the database is flushed; their output is printed when the
test failed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import websockets
from channels.db import database_sync_to_async
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client
from websockets.asyncio.client import connect as ws_connect

from realtime.bus import get_redis
from realtime.presence import presence_snapshot
from realtime.tests.wsclient import publish_marker
from tests import support

PROJECT_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 30.0  # seconds for a server process to answer HTTP
STOP_TIMEOUT = 5.0  # seconds for a graceful stop before SIGKILL
READY_PATH = "/api/v1/openapi.json"  # needs no static files (DEBUG=0 without collectstatic)

# Short protocol intervals so heartbeats and timeouts are observable in seconds.
SERVER_ENV = {
    "ALLOWED_HOSTS": "127.0.0.1,localhost",
    "DEBUG": "0",
    "SECURE_COOKIES": "0",
    "REALTIME_HEADS_INTERVAL": "0.5",
    "REALTIME_PING_INTERVAL": "1",
    "REALTIME_IDLE_TIMEOUT": "3",
    "REALTIME_PRESENCE_TTL": "4",  # the SIGKILL test waits for a dead process to expire
    "REALTIME_PRESENCE_HEARTBEAT": "1",
    "DB_POOL": "0",
    "PYTHONUNBUFFERED": "1",
    "LOG_LEVEL": "INFO",
}

# No proxy for loopback calls, whatever the environment says.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def db(fn):
    """Run a synchronous ORM call from an async test (in a thread, its connection closed after)."""
    return database_sync_to_async(fn)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url() -> str:
    """The test database (this process's suffixed one) as a DATABASE_URL (also for a Unix-socket host)."""
    return support.database_url(connection.settings_dict)


@dataclass
class LiveServer:
    kind: str
    port: int
    process: subprocess.Popen
    log_path: Path
    env: dict = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def origin(self) -> str:
        return self.base_url

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/v1/"

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the process (a crash: no shutdown hook runs) and reap it."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), SIGKILL after STOP_TIMEOUT; always reaped."""
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait(timeout=10)


def _command(kind: str, port: int) -> list[str]:
    if kind == "uvicorn":
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "bros.asgi:application",
            "--ws",
            "realtime.uvicorn_protocol:WebSocketProtocol",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
    if kind == "daphne":
        return [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "bros.asgi:application"]
    raise ValueError(kind)


def _wait_ready(server: LiveServer, deadline: float) -> None:
    last = None
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.kind} on port {server.port} exited with {server.process.returncode}")
        try:
            with _http.open(server.base_url + READY_PATH, timeout=2) as response:
                if response.status == 200:
                    return
                last = response.status
        except urllib.error.HTTPError as exc:
            last = exc.code
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{server.kind} on port {server.port} not ready in {READY_TIMEOUT}s (last: {last})")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def live_prefix(settings):
    """A Redis prefix for this test only (channels and presence); its keys are deleted afterwards."""
    settings.REDIS_PREFIX = prefix = f"{django_settings.REDIS_PREFIX}-live-{uuid.uuid4().hex[:8]}"
    yield prefix
    client = get_redis()
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)


@pytest.fixture
def live_servers(request, django_db_setup, transactional_db, live_prefix):
    """Start server processes: `live_servers(n=1, kind="uvicorn", **env) -> [LiveServer, ...]`.

    Depends on `transactional_db`, so the servers are stopped before the database is flushed.
    """
    started: list[LiveServer] = []
    base_env = {
        **os.environ,
        **SERVER_ENV,
        "DJANGO_SETTINGS_MODULE": "bros.settings",
        "DATABASE_URL": database_url(),
        "REDIS_URL": django_settings.REDIS_URL,
        "REDIS_PREFIX": live_prefix,
        "SECRET_KEY": django_settings.SECRET_KEY,
    }

    def spawn(kind: str, env: dict) -> LiveServer:
        port = free_port()
        server_env = {**base_env, **{key: str(value) for key, value in env.items()}}
        with tempfile.NamedTemporaryFile(prefix=f"bros-live-{kind}-{port}-", suffix=".log", delete=False) as log:
            process = subprocess.Popen(
                _command(kind, port),
                cwd=PROJECT_ROOT,
                env=server_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = LiveServer(kind, port, process, Path(log.name), server_env)
        started.append(server)
        return server

    def start(n: int = 1, kind: str = "uvicorn", **env) -> list[LiveServer]:
        batch = [spawn(kind, env) for _ in range(n)]  # start them all, then wait for each
        deadline = time.monotonic() + READY_TIMEOUT
        for i in range(len(batch)):
            for attempt in range(3):
                try:
                    _wait_ready(batch[i], deadline)
                    break
                except RuntimeError:
                    # It exited: if it lost its free port to another process, try another port.
                    if attempt == 2 or "in use" not in batch[i].log():
                        raise
                    batch[i] = spawn(kind, env)
        return batch

    yield start

    for server in started:
        with contextlib.suppress(Exception):
            server.stop()
    report = getattr(request.node, "rep_call", None)
    failed = report is None or report.failed
    for server in started:
        if failed:
            print(f"\n===== {server.kind} pid {server.pid} port {server.port} (exit {server.process.returncode}) =====")
            print(server.log()[-20000:])
        with contextlib.suppress(OSError):
            server.log_path.unlink()


@pytest.fixture
def session_cookie(transactional_db):
    """`session_cookie(username) -> str`: a session of the demo user, stored in the shared database."""

    def login(username: str) -> str:
        from django.contrib.auth import get_user_model

        client = Client()
        client.force_login(get_user_model().objects.get(username=username))
        return client.cookies[django_settings.SESSION_COOKIE_NAME].value

    return login


def presence_of(server: LiveServer) -> dict | None:
    """This server's entry in `presence_snapshot()` (None once it left presence)."""
    return next((p for p in presence_snapshot()["processes"] if p["pid"] == server.pid), None)


def server_tcp_state(server: LiveServer, client_port: int) -> str | None:
    """State of the server's end of the TCP connection from `client_port` (None: no such socket).

    Read from /proc/net/tcp (both ends of a loopback connection are listed there).
    """
    states = {"01": "ESTABLISHED", "04": "FIN_WAIT1", "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE"}
    states |= {"08": "CLOSE_WAIT", "09": "LAST_ACK", "0B": "CLOSING"}
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            remote_port = int(fields[2].split(":")[1], 16)
            if local_port == server.port and remote_port == client_port:
                return states.get(fields[3], fields[3])
    return None


# -- HTTP -------------------------------------------------------------------------------------------


def http_json(
    server: LiveServer, method: str, path: str, *, body=None, cookie: str | None = None, csrf=True, headers=None
):
    """Call the server's HTTP API with a session (and a CSRF token on writes); return (status, json).

    `headers` are added to the request (e.g. an `Idempotency-Key`).
    """
    headers = {
        "Accept": "application/json",
        "Origin": server.origin,
        "Referer": server.base_url + "/",
        **(headers or {}),
    }
    cookies = []
    if cookie:
        cookies.append(f"{django_settings.SESSION_COOKIE_NAME}={cookie}")
    if csrf and method != "GET":
        token = uuid.uuid4().hex  # 32 characters: a valid unmasked CSRF secret
        cookies.append(f"{django_settings.CSRF_COOKIE_NAME}={token}")
        headers["X-CSRFToken"] = token
    if cookies:
        headers["Cookie"] = "; ".join(cookies)
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(server.base_url + path, data=data, headers=headers, method=method)
    try:
        with _http.open(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, text.decode(errors="replace")


# -- WebSocket clients ------------------------------------------------------------------------------


class WsClient:
    """A protocol client: frames are read into a queue by a background task.

    With `auto_pong` it answers every server `ping` with `pong` (as the reference client does), so
    it stays connected past the idle timeout; `ping` frames are still queued for tests to inspect.
    """

    def __init__(self, ws, *, auto_pong: bool = True):
        self.ws = ws
        self.auto_pong = auto_pong
        self.frames: asyncio.Queue[dict] = asyncio.Queue()
        self.closed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, server: LiveServer, cookie: str | None, *, origin: str | None = None, auto_pong=True):
        headers = {"Cookie": f"{django_settings.SESSION_COOKIE_NAME}={cookie}"} if cookie else {}
        ws = await ws_connect(
            server.ws_url,
            origin=server.origin if origin is None else (origin or None),  # "" sends no Origin header
            additional_headers=headers,
            proxy=None,
            ping_interval=None,
            open_timeout=10,
            close_timeout=2,
            max_size=None,
        )
        return cls(ws, auto_pong=auto_pong)

    async def _read(self) -> None:
        try:
            async for text in self.ws:
                frame = json.loads(text)
                if frame.get("type") == "ping" and self.auto_pong:
                    with contextlib.suppress(websockets.ConnectionClosed):
                        await self.ws.send('{"type":"pong"}')
                await self.frames.put(frame)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed.set()

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def send(self, frame: dict | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def next(self, timeout: float = 10.0, *, skip=("ping",)) -> dict:
        """The next frame whose type is not in `skip`; fails on timeout or close."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if self.frames.empty() and self.closed.is_set():
                raise AssertionError(f"connection closed ({self.close_code}) while waiting for a frame")
            if remaining <= 0:
                raise AssertionError(f"no frame within {timeout}s")
            getter = asyncio.ensure_future(self.frames.get())
            closed = asyncio.ensure_future(self.closed.wait())
            done, _ = await asyncio.wait({getter, closed}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            closed.cancel()
            if getter in done:
                frame = getter.result()
                if frame.get("type") not in skip:
                    return frame
            else:
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await getter

    async def expect(self, type_: str, timeout: float = 10.0, **fields) -> dict:
        """The next non-ping frame, which must be of `type_` (and have `fields`)."""
        frame = await self.next(timeout)
        assert frame.get("type") == type_, f"expected {type_}, got {frame}"
        for key, value in fields.items():
            assert frame.get(key) == value, f"{key}: expected {value!r} in {frame}"
        return frame

    async def subscribe(self, stream: str, *, id: str = "s1", since=None, epoch=None, timeout=10.0) -> dict:
        frame = {"type": "subscribe", "id": id, "stream": stream}
        if since is not None:
            frame |= {"since": since, "epoch": epoch}
        await self.send(frame)
        return await self.expect("subscribed", timeout, id=id, stream=stream)

    async def events(self, stream: str, count: int, timeout: float = 15.0) -> list[dict]:
        """The next `count` frames, which must all be events of `stream`."""
        deadline = asyncio.get_running_loop().time() + timeout
        got = []
        while len(got) < count:
            remaining = max(0.01, deadline - asyncio.get_running_loop().time())
            try:
                frame = await self.next(remaining)
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc}; got {len(got)} of {count} events: {[e.get('seq') for e in got]}"
                ) from None
            assert frame.get("type") == "event" and frame.get("stream") == stream, f"not an event of {stream}: {frame}"
            got.append(frame)
        return got

    async def frames_until(self, marker: dict, timeout: float = 10.0) -> list[dict]:
        """Non-ping frames that arrive before `marker` (see `bus_marker`): [] proves nothing more comes."""
        extra = []
        while (frame := await self.next(timeout)) != marker:
            extra.append(frame)
        return extra

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 3)
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader


@pytest.fixture
async def ws_clients():
    """`await ws_clients(server, cookie, **kw) -> WsClient`; every client is closed at the end."""
    opened: list[WsClient] = []

    async def open_client(server: LiveServer, cookie: str | None, **kwargs) -> WsClient:
        client = await WsClient.open(server, cookie, **kwargs)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        await client.close()


# -- a raw client that does the handshake by hand and then stops reading ----------------------------


class RawWebSocket:
    """A blocking WebSocket client on a plain TCP socket with a tiny receive buffer."""

    def __init__(self, server: LiveServer, cookie: str, *, rcvbuf: int = 4096):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: sets the window
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", server.port))
        self.local_port = self.sock.getsockname()[1]
        self.buffer = b""
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            "GET /ws/v1/ HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{server.port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            f"Origin: {server.origin}\r\n"
            f"Cookie: {django_settings.SESSION_COOKIE_NAME}={cookie}\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise AssertionError(f"handshake refused: {status!r}")

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError
        self.buffer += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def send_text(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        header = bytes([0x81])
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])
        elif len(payload) < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def recv_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame; EOFError when the server closed the TCP connection."""
        first, second = self._take(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._take(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._take(8))
        if second & 0x80:
            mask = self._take(4)
            return first & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(self._take(length)))
        return first & 0x0F, self._take(length)

    def recv_json(self) -> dict:
        """The next text frame as JSON (control frames are skipped)."""
        while True:
            opcode, payload = self.recv_frame()
            if opcode == 0x1:
                return json.loads(payload)
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise ConnectionAbortedError(code)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# -- committing events in the test process ---------------------------------------------------------


async def bus_marker(stream: str) -> dict:
    """Publish a marker on `stream`'s bus channel behind everything published so far; return it.

    Every server process hands it to its subscribers of the stream only after all it got before it
    (realtime.tests.wsclient.publish_marker): a client that has the marker has everything it will get.
    """
    return await asyncio.to_thread(publish_marker, stream)


def create_orders(count: int, *, center: str = "gangnam") -> list:
    """Create `count` orders (one `delivery.created` on `deliveries:<center>` each), one commit each."""
    from deliveries.models import Shop
    from deliveries.services import create_order

    shop = Shop.objects.filter(center__code=center, is_active=True).order_by("name").first()
    return [
        create_order(
            actor=None,
            shop_id=shop.pk,
            customer_name=f"Live test {i}",
            customer_phone="010-1234-5678",
            address=f"{i} Teheran-ro",
            items=[{"name": "Bibimbap", "qty": 1}],
        )
        for i in range(count)
    ]


def emit_notices(count: int, *, stream: str = "broadcast:all", batch: int = 100, text_size: int = 50) -> list[int]:
    """Commit `count` `notice` events on `stream`, `batch` per transaction; return their seqs."""
    from django.db import transaction

    from realtime.events import build
    from realtime.outbox import emit

    seqs: list[int] = []
    for start in range(0, count, batch):
        with transaction.atomic():
            rows = emit(
                [
                    build(stream, "notice", {"text": f"{start + i:06d} " + "x" * text_size})
                    for i in range(min(batch, count - start))
                ]
            )
        seqs.extend(row.seq for row in rows)
    return seqs


def stream_position(stream: str) -> tuple[str, int]:
    from realtime.outbox import stream_position as position

    return tuple(position(stream))
