"""Fan-out benchmark: BROS (uvicorn, 2 processes, daphne) vs the textbook Channels pattern vs socket.io.

    .venv/bin/python bench/fanout.py                      # the full suite (~15 min on 2 cores)
    .venv/bin/python bench/fanout.py --quick              # small N: check the harness (~2 min)
    .venv/bin/python bench/fanout.py --scenarios burst --variants bros-uvicorn,socketio

Everything runs on loopback; every loop is bounded in time and count and stops by itself. The
runner starts each server variant itself, logs in (BROS), starts load-client processes
(`bench/loadclient.py`) and a publisher per variant (`bench/publish_bros.py`,
`python -m bench.textbook publish`, `bench/socketio/publish.js`), measures, and kills every
process it started (also on Ctrl-C). Results: a table per scenario on stdout and JSON lines in
`bench/results/fanout-<time>.jsonl`. See docs/benchmarks.md.

Scenarios
- throughput: N clients on one stream; the publish rate is raised step by step (x2, then bisected)
  until a step fails. A step passes if no message is lost, no duplicate arrives, the
  broadcast-to-last-client p99 is under 250 ms and the publisher kept its rate. Reported:
  sustained deliveries/s (best passing step) and the max delivered/s seen in any step.
- burst: 300 events as fast as the publisher can to 1,000 clients: lost must be 0.
- rooms: 200 rooms x 25 clients, 500 events/s in total for 20 s: lost must be 0.
- slow: 1,000 clients on one stream, one of them stops reading (small receive buffer, reading
  paused): the others' loss and latency vs a baseline step; what happens to the slow one.
- connect: only the connect storm (issue 13): --connect-n logged-in clients connect and subscribe
  (socket.io: connect and join), --connect-rounds times per variant, the variants alternating
  round by round. Reported: median storm time, p50/p99 per client, failures, and each variant's
  median over socket.io's (target: BROS at most 2x socket.io, 0 failures).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV_BIN = REPO / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
HOST = "127.0.0.1"
PREFIX = "brosbench"
SIO_KEY = f"{PREFIX}-sio"

BASE_ENV = {
    "SECRET_KEY": "bench-not-secret",
    # BENCH_DATABASE_URL / BENCH_REDIS_URL: another database or Redis db (e.g. while someone else benches).
    "DATABASE_URL": os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bros_bench"),
    "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    "ALLOWED_HOSTS": "127.0.0.1,localhost",
    "DEBUG": "0",
    "SECURE_COOKIES": "0",
    "REDIS_PREFIX": PREFIX,
    "LOG_LEVEL": "WARNING",
    "PYTHONUNBUFFERED": "1",
}

VARIANTS = ["bros-uvicorn", "bros-uvicorn-2p", "bros-daphne", "textbook-uvicorn", "socketio"]
OPTIONAL_VARIANTS = ["bros-uvicorn-w2"]  # uvicorn --workers 2 on one port (kernel spreads accepts)
LABELS = {
    "bros-uvicorn": "BROS hub, uvicorn 1 proc",
    "bros-uvicorn-2p": "BROS hub, uvicorn 2 procs (2 ports)",
    "bros-uvicorn-w2": "BROS hub, uvicorn --workers 2",
    "bros-daphne": "BROS hub, daphne 1 proc",
    "textbook-uvicorn": "textbook group_send, uvicorn 1 proc",
    "socketio": "socket.io 4 + Redis adapter, node 1 proc",
}


def log(*args) -> None:
    print(time.strftime("%H:%M:%S"), *args, flush=True)


# -- processes -------------------------------------------------------------------------------------


class Proc:
    """A child process in its own session (so its own children die with it)."""

    registry: list[Proc] = []

    def __init__(
        self, name: str, argv: list[str], *, env: dict | None = None, log_path: Path | None = None, pipes: bool = False
    ):
        self.name = name
        self.argv = argv
        self.env = {**os.environ, **BASE_ENV, **(env or {})}
        self.log_path = log_path
        self.pipes = pipes
        self.proc: asyncio.subprocess.Process | None = None
        self._log = None

    async def start(self) -> Proc:
        self._log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=str(REPO),
            env=self.env,
            stdin=asyncio.subprocess.PIPE if self.pipes else subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if self.pipes else self._log,
            stderr=self._log,
            start_new_session=True,
            limit=256 * 1024 * 1024,
        )
        Proc.registry.append(self)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def request(self, obj: dict, timeout: float = 600.0) -> dict:
        self.proc.stdin.write((json.dumps(obj, separators=(",", ":")) + "\n").encode())
        await self.proc.stdin.drain()
        return await self.read(timeout)

    async def read(self, timeout: float = 60.0) -> dict:
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"{self.name} exited (rc={self.proc.returncode}); see {self.log_path}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.name}: {answer['error']}")
        return answer

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, grace: float = 3.0) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        else:  # the leader is gone: make sure nothing of its group survives
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
        if self in Proc.registry:
            Proc.registry.remove(self)

    async def interrupt(self, wait: float = 10.0) -> None:
        """SIGINT (py-spy writes its output on it), then stop."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), wait)
        await self.stop()

    @classmethod
    def kill_all_sync(cls) -> None:
        for p in list(cls.registry):
            if p.proc is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.proc.pid, signal.SIGKILL)


# -- small HTTP client (readiness, login) ------------------------------------------------------------


async def http(
    port: int, method: str, path: str, *, headers: dict | None = None, body: bytes = b"", timeout: float = 10.0
) -> tuple[int, list[tuple[str, str]], bytes]:
    async def go():
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            head = [
                f"{method} {path} HTTP/1.1",
                f"Host: {HOST}:{port}",
                "Connection: close",
                f"Content-Length: {len(body)}",
            ]
            head += [f"{k}: {v}" for k, v in (headers or {}).items()]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
        header_blob, _, payload = data.partition(b"\r\n\r\n")
        lines = header_blob.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if ":" in line]
        return status, hdrs, payload

    return await asyncio.wait_for(go(), timeout)


async def wait_http(port: int, path: str, proc: Proc, *, want: int | None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited during start; see {proc.log_path}")
        try:
            status, _, _ = await http(port, "GET", path, timeout=5)
            if want is None or status == want:
                return
            last = f"HTTP {status}"
        except (TimeoutError, OSError, IndexError, ValueError) as exc:
            last = repr(exc)
        await asyncio.sleep(0.25)
    raise RuntimeError(f"{proc.name} not ready on :{port}{path} after {timeout}s ({last}); see {proc.log_path}")


def _cookies(headers: list[tuple[str, str]]) -> dict[str, str]:
    out = {}
    for k, v in headers:
        if k.lower() == "set-cookie":
            name, _, rest = v.partition("=")
            out[name.strip()] = rest.split(";", 1)[0]
    return out


async def login(port: int, username: str = "hq", password: str = "demo") -> str:
    """Log in through the real login form (CSRF included); return the session cookie value."""
    status, headers, _ = await http(port, "GET", "/accounts/login/")
    csrf = _cookies(headers).get("csrftoken")
    if status != 200 or not csrf:
        raise RuntimeError(f"GET /accounts/login/ gave HTTP {status} without a CSRF cookie")
    from urllib.parse import urlencode

    body = urlencode({"csrfmiddlewaretoken": csrf, "username": username, "password": password}).encode()
    status, headers, _ = await http(
        port,
        "POST",
        "/accounts/login/",
        body=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"csrftoken={csrf}",
            "Origin": f"http://{HOST}:{port}",
            "Referer": f"http://{HOST}:{port}/accounts/login/",
        },
    )
    session = _cookies(headers).get("sessionid")
    if status != 302 or not session:
        raise RuntimeError(f"login as {username} failed: HTTP {status}")
    return session


# -- setup ---------------------------------------------------------------------------------------------


def run_checked(argv: list[str], env: dict | None = None) -> str:
    out = subprocess.run(
        argv, cwd=str(REPO), env={**os.environ, **BASE_ENV, **(env or {})}, capture_output=True, text=True, timeout=300
    )
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def prepare(args) -> None:
    """Idempotent: the bros_bench database, migrations, demo data, static manifest, npm packages."""
    server, name = BASE_ENV["DATABASE_URL"].rsplit("/", 1)
    log(f"setup: database {name}, migrate, seed_demo, collectstatic")
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        if not conn.execute("select 1 from pg_database where datname = %s", [name]).fetchone():
            conn.execute(f'create database "{name}"')
    run_checked([PYTHON, "manage.py", "migrate", "--noinput"])
    run_checked([PYTHON, "manage.py", "seed_demo", "--force"])
    # The rooms scenario's streams are deliveries:room-NNN: streams of unknown centers are refused.
    rooms = [name.partition(":")[2] for name in room_names("bros", max(args.rooms, 2))]
    make_rooms = (
        "from core.models import Center\n"
        f"for code in {rooms!r}:\n"
        "    Center.objects.get_or_create(code=code, defaults={'name': code, 'lat': 37.5, 'lng': 127.0})\n"
    )
    run_checked([PYTHON, "manage.py", "shell", "-c", make_rooms])
    # DEBUG=0 serves pages through the static manifest: the login page needs it.
    run_checked([PYTHON, "manage.py", "collectstatic", "--noinput"])
    if "socketio" in args.variants and not (BENCH / "socketio" / "node_modules").exists():
        log("setup: npm install in bench/socketio")
        out = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund"],
            cwd=str(BENCH / "socketio"),
            capture_output=True,
            text=True,
            timeout=600,
        )
        if out.returncode != 0:
            raise RuntimeError(f"npm install failed:\n{out.stdout}\n{out.stderr}")


def clean_redis() -> None:
    """Forget leftovers of earlier runs under the bench prefix (textbook groups, presence)."""
    import redis

    r = redis.Redis.from_url(BASE_ENV["REDIS_URL"])
    for pattern in (f"{PREFIX}:*", f"{SIO_KEY}*"):
        batch = []
        for key in r.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                r.delete(*batch)
                batch = []
        if batch:
            r.delete(*batch)
    r.close()


def code_fingerprint() -> dict:
    """What BROS code a server started with: the tree changes while others work in it."""
    import hashlib

    digest = hashlib.sha1()
    for path in sorted([*(REPO / "realtime").glob("*.py"), REPO / "bros" / "asgi.py", REPO / "bros" / "settings.py"]):
        digest.update(path.name.encode() + path.read_bytes())
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=str(REPO), capture_output=True, text=True)
    return {"git": head.stdout.strip(), "realtime_sha1": digest.hexdigest()[:12]}


def machine_facts() -> dict:
    def version(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except Exception:
            return None

    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=str(REPO), capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "realtime", "bros"], cwd=str(REPO), capture_output=True, text=True
    )
    return {
        "cpus": os.cpu_count(),
        "cpu_model": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            None,
        ),
        "mem_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "node": version(["node", "--version"]),
        "redis": version(["redis-server", "--version"]),
        "git": git.stdout.strip(),
        "realtime_or_bros_dirty": bool(dirty.stdout.strip()),
    }


# -- variants: servers and publishers ----------------------------------------------------------------


@dataclass
class Server:
    variant: str
    procs: list[Proc]
    ports: list[int]
    kind: str  # bros | textbook | sio
    cookie: str | None = None

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.alive()]


async def start_server(variant: str, port: int, logdir: Path, extra_env: dict) -> Server:
    uvicorn = [
        str(VENV_BIN / "uvicorn"),
        "--ws",
        "websockets-sansio",
        "--host",
        HOST,
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    if variant in ("bros-uvicorn", "bros-uvicorn-2p", "bros-uvicorn-w2"):
        count = 2 if variant == "bros-uvicorn-2p" else 1
        procs, ports = [], []
        for i in range(count):
            # The production command line (README): uvicorn's sans-I/O protocol plus the laggard fix.
            argv = [*uvicorn, "--port", str(port + i), "bros.asgi:application"]
            argv[argv.index("websockets-sansio")] = "realtime.uvicorn_protocol:WebSocketProtocol"
            if variant == "bros-uvicorn-w2":
                argv += ["--workers", "2"]
            procs.append(Proc(f"{variant}#{i}", argv, env=extra_env, log_path=logdir / f"{variant}-{i}.log"))
            ports.append(port + i)
        server = Server(variant, procs, ports, "bros")
    elif variant == "bros-daphne":
        argv = [str(VENV_BIN / "daphne"), "-b", HOST, "-p", str(port), "-v", "0", "bros.asgi:application"]
        proc = Proc(variant, argv, env=extra_env, log_path=logdir / f"{variant}.log")
        server = Server(variant, [proc], [port], "bros")
    elif variant == "textbook-uvicorn":
        argv = [*uvicorn, "--port", str(port), "bench.textbook:application"]
        env = {"DJANGO_SETTINGS_MODULE": "bench.textbook_settings", **extra_env}
        server = Server(variant, [Proc(variant, argv, env=env, log_path=logdir / f"{variant}.log")], [port], "textbook")
    elif variant == "socketio":
        argv = [
            "node",
            str(BENCH / "socketio" / "server.js"),
            "--port",
            str(port),
            "--redis",
            BASE_ENV["REDIS_URL"],
            "--key",
            SIO_KEY,
        ]
        server = Server(variant, [Proc(variant, argv, log_path=logdir / f"{variant}.log")], [port], "sio")
    else:
        raise ValueError(variant)
    for p in server.procs:
        await p.start()
    for p, prt in zip(server.procs, server.ports, strict=True):
        if server.kind == "bros":
            await wait_http(prt, "/accounts/login/", p, want=200)
        elif server.kind == "textbook":
            await wait_http(prt, "/", p, want=200)
        else:
            await wait_http(prt, "/socket.io/?EIO=4&transport=polling", p, want=None)
            await asyncio.sleep(0.5)  # the adapter's PSUBSCRIBE
    if server.kind == "bros":
        server.cookie = await login(server.ports[0])
    return server


async def start_publisher(kind: str, logdir: Path, variant: str) -> Proc:
    if kind == "bros":
        argv = [PYTHON, str(BENCH / "publish_bros.py")]
        env = {}
    elif kind == "textbook":
        argv = [PYTHON, "-m", "bench.textbook", "publish"]
        env = {"DJANGO_SETTINGS_MODULE": "bench.textbook_settings"}
    else:
        argv = ["node", str(BENCH / "socketio" / "publish.js"), "--redis", BASE_ENV["REDIS_URL"], "--key", SIO_KEY]
        env = {}
    proc = await Proc(
        f"publisher-{variant}", argv, env=env, log_path=logdir / f"publisher-{variant}.log", pipes=True
    ).start()
    await proc.read(timeout=60)
    return proc


def room_names(kind: str, rooms: int) -> list[str]:
    """The stream / group / room names of one benchmark: one shared stream, or `rooms` rooms."""
    if rooms == 1:
        return ["broadcast:all"] if kind == "bros" else ["all"]
    names = [f"room-{i + 1:03d}" for i in range(rooms)]
    return [f"deliveries:{n}" for n in names] if kind == "bros" else names


def client_spec(server: Server, index: int, room: str, rcvbuf: int | None = None) -> dict:
    port = server.ports[index % len(server.ports)]
    spec = {"kind": server.kind, "host": HOST, "port": port, "headers": {"Origin": f"http://{HOST}:{port}"}}
    if server.kind == "bros":
        spec["path"] = "/ws/v1/"
        spec["headers"]["Cookie"] = f"sessionid={server.cookie}"
        spec["subscribe"] = json.dumps({"type": "subscribe", "id": "s", "stream": room}, separators=(",", ":"))
    elif server.kind == "textbook":
        spec["path"] = f"/ws/room/{room}/"
    else:
        spec["path"] = f"/socket.io/?EIO=4&transport=websocket&room={room}"
    if rcvbuf:
        spec["rcvbuf"] = rcvbuf
    spec["index"] = index
    return spec


# -- measurement ----------------------------------------------------------------------------------------


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            pass
    return total


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def service_pids() -> dict[str, list[int]]:
    out: dict[str, list[int]] = {"redis": [], "postgres": []}
    for p in psutil.process_iter(["name", "username", "cmdline"]):
        try:
            name = p.info["name"] or ""
            cmd = " ".join(p.info["cmdline"] or [])
            if name.startswith("redis-server") and "6379" in cmd:
                out["redis"].append(p.pid)
            elif p.info["username"] == "postgres" and BASE_ENV["DATABASE_URL"].rsplit("/", 1)[1] in cmd:
                out["postgres"].append(p.pid)  # this benchmark's backends only
        except psutil.Error:
            pass
    return out


def _cpu_by_pid(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
    return out


def cpu_snapshot(server: Server, workers: list[Proc], publisher: Proc | None) -> dict:
    services = service_pids()  # PostgreSQL backends come and go: compare per pid
    return {
        "server": cpu_seconds(server.pids()),
        "clients": cpu_seconds([w.pid for w in workers if w.alive()]),
        "publisher": cpu_seconds([publisher.pid]) if publisher else 0.0,
        "redis": _cpu_by_pid(services["redis"]),
        "postgres": _cpu_by_pid(services["postgres"]),
        "machine": _machine_busy(),
        "t": time.monotonic(),
    }


def cpu_pct(a: dict, b: dict) -> dict:
    """CPU use between two snapshots in % of one core (the machine figure too: 200 % = both cores busy)."""
    wall = b["t"] - a["t"]
    out = {}
    for key in a:
        if key == "t":
            continue
        if isinstance(a[key], dict):
            used = sum(b[key][pid] - a[key][pid] for pid in b[key] if pid in a[key]) + sum(
                b[key][pid] for pid in b[key] if pid not in a[key] and b[key][pid] < wall
            )
        else:
            used = b[key] - a[key]
        out[key] = round(100 * used / wall, 1) if wall > 0 else None
    # Whatever else ran on the machine meanwhile (other users' tests, servers): noise to report.
    out["other"] = round(out["machine"] - sum(v for k, v in out.items() if k != "machine"), 1)
    return out


def _machine_busy() -> float:
    """CPU seconds the whole machine spent busy, in units of one core (so 200 % = both cores)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def hist_percentile(hist: dict[int, int], q: float) -> float | None:
    total = sum(hist.values())
    if not total:
        return None
    need = q / 100 * total
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= need:
            return (bucket + 1) / 1000  # upper edge of the 1 ms bucket
    return None


@dataclass
class Session:
    """One server variant with its connected clients and its publisher."""

    variant: str
    server: Server
    publisher: Proc
    workers: list[Proc]
    rooms: list[str]
    room_of: list[int]  # client index -> room index
    slow: set[int] = field(default_factory=set)
    connect: dict = field(default_factory=dict)
    tags: itertools.count = field(default_factory=lambda: itertools.count(1))

    async def all_workers(self, cmd: dict, timeout: float = 120.0) -> list[dict]:
        return await asyncio.gather(*(w.request(cmd, timeout) for w in self.workers))

    def cpu_snapshot(self) -> dict:
        return cpu_snapshot(self.server, self.workers, self.publisher)

    async def step(
        self,
        *,
        rate: float,
        count: int,
        pad: int = 100,
        mode: str | None = None,
        drain_max: float = 15.0,
        stall: float = 3.0,
    ) -> dict:
        tag = next(self.tags)
        await self.all_workers({"cmd": "step", "tag": tag})
        cpu0 = self.cpu_snapshot()
        cmd = {"rate": rate, "count": count, "rooms": self.rooms, "tag": tag, "pad": pad}
        if mode:
            cmd["mode"] = mode
        pub = await self.publisher.request(cmd, timeout=count / max(rate, 1) + 300)
        per_room = pub["per_room"]
        active = [i for i in range(len(self.room_of)) if i not in self.slow]
        expected_total = sum(per_room[self.room_of[i]] for i in active)
        # Drain: until everything arrived, or nothing arrived for `stall` s, or `drain_max` s passed.
        t_end_pub = time.monotonic()
        last_total, last_change = -1, time.monotonic()
        while True:
            prog = await self.all_workers({"cmd": "progress"})
            total = sum(p["received"] for p in prog)
            now = time.monotonic()
            if total >= expected_total:
                break
            if total != last_total:
                last_total, last_change = total, now
            elif now - last_change > stall:
                break
            if now - t_end_pub > drain_max:
                break
            await asyncio.sleep(0.1)
        cpu1 = self.cpu_snapshot()
        stats = await self.all_workers({"cmd": "stats"})
        return self.summarize(rate, count, pub, stats, cpu0, cpu1, expected_total)

    def summarize(self, rate, count, pub, stats, cpu0, cpu1, expected_total) -> dict:
        per_room = pub["per_room"]
        received = lost = extra = clients_with_loss = 0
        for st in stats:
            for idx, got in zip(st["indexes"], st["received"], strict=True):
                if idx in self.slow:
                    continue
                exp = per_room[self.room_of[idx]]
                received += got
                if got < exp:
                    lost += exp - got
                    clients_with_loss += 1
                elif got > exp:
                    extra += got - exp
        events: dict[int, list] = {}
        for st in stats:
            for n, (cnt, last) in st["events"].items():
                e = events.setdefault(int(n), [0, 0.0])
                e[0] += cnt
                e[1] = max(e[1], last)
        t_pub = pub["t_pub"]
        last_client = sorted(events[n][1] - t_pub[n] for n in events if n < len(t_pub))
        never = sum(1 for n in range(len(t_pub)) if n not in events)
        hist: dict[int, int] = {}
        for st in stats:
            for b, v in st["hist"].items():
                hist[int(b)] = hist.get(int(b), 0) + v
        last_receipt = max(st["last_receipt"] for st in stats)
        t_first = pub["t_first"]
        span = last_receipt - t_first if received and last_receipt > t_first else None
        achieved = None
        if pub["published"] > 1 and pub["t_last"] > pub["t_first"]:
            achieved = (pub["published"] - 1) / (pub["t_last"] - pub["t_first"])
        p99 = percentile(last_client, 99)
        rate_ok = (not rate) or (achieved is not None and achieved >= 0.95 * rate)
        open_clients = sum(st["open"] for st in stats)
        result = {
            "rate": rate,
            "count": count,
            "mode": pub.get("mode"),
            "published": pub["published"],
            "pub_rate": achieved,
            "pub_late_max": pub.get("late_max"),
            "prepare_s": pub.get("prepare_s"),
            "clients": len(self.room_of) - len(self.slow),
            "open": open_clients,
            "expected": expected_total,
            "received": received,
            "lost": lost,
            "extra": extra,
            "clients_with_loss": clients_with_loss,
            "events_never_received": never,
            "seq_gaps": sum(st["gaps"] for st in stats),
            "seq_dups": sum(st["dups"] for st in stats),
            "stray": sum(st["stray"] for st in stats),
            "close_codes": _merge_counts(st["close_codes"] for st in stats),
            "other_frames": _merge_counts(st["other"] for st in stats),
            "delivered_per_s": received / span if span else 0.0,
            "span_s": span,
            "last_client_p50_ms": _ms(percentile(last_client, 50)),
            "last_client_p99_ms": _ms(p99),
            "last_client_max_ms": _ms(last_client[-1] if last_client else None),
            "msg_p50_ms": _ms(hist_percentile(hist, 50)),
            "msg_p99_ms": _ms(hist_percentile(hist, 99)),
            "cpu_pct": cpu_pct(cpu0, cpu1),
            "server_rss_mb": round(rss_mb(self.server.pids()), 1),
        }
        result["passed"] = bool(
            lost == 0
            and extra == 0
            and result["seq_dups"] == 0
            and p99 is not None
            and p99 < 0.25
            and rate_ok
            and open_clients == result["clients"]
        )
        return result


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


def _merge_counts(dicts) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


# -- profiling (py-spy) --------------------------------------------------------------------------------


async def start_spies(server: Server, logdir: Path, label: str) -> list[tuple[Proc, Path]]:
    spy = VENV_BIN / "py-spy"
    if not spy.exists():
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy (for the run only)")
    spies = []
    for pid in server.pids():
        path = logdir / f"py-spy-{server.variant}-{label}-{pid}.txt"
        argv = [str(spy), "record", "--nonblocking", "-r", "200", "-f", "raw", "-o", str(path), "-p", str(pid)]
        proc = await Proc(f"py-spy-{pid}", argv, log_path=logdir / f"py-spy-{label}.log").start()
        spies.append((proc, path))
    await asyncio.sleep(1.0)
    return spies


async def stop_spies(spies: list[tuple[Proc, Path]], top: int = 25) -> dict:
    for proc, _ in spies:
        await proc.interrupt()
    return summarize_stacks([path for _, path in spies], top)


def summarize_stacks(paths: list[Path], top: int = 25) -> dict:
    """Self and inclusive sample shares from py-spy's collapsed ("raw") stacks."""
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    total = 0
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [f for f in stack.split(";") if f]
            if not frames:
                continue
            frames = [
                re.sub(r" \((?:/work/main/)?(?:\.venv/lib/python3\.\d+/site-packages/)?", " (", f) for f in frames
            ]
            total += n
            self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + n
            for f in set(frames):
                incl_counts[f] = incl_counts.get(f, 0) + n

    def share(d):
        return [[k, round(100 * v / total, 1)] for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {"samples": total, "self": share(self_counts), "inclusive": share(incl_counts)}


class Runner:
    def __init__(self, args):
        self.args = args
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.outdir = BENCH / "results"
        self.outdir.mkdir(exist_ok=True)
        self.logdir = self.outdir / f"logs-{stamp}"
        self.logdir.mkdir()
        self.out_path = Path(args.out) if args.out else self.outdir / f"fanout-{stamp}.jsonl"
        self.rows: list[dict] = []
        self.burst_done: set[str] = set()
        self.port = args.port_base

    def record(self, row: dict) -> None:
        row = {"time": dt.datetime.now().isoformat(timespec="seconds"), **row}
        self.rows.append(row)
        with open(self.out_path, "a") as f:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")

    async def wait_quiet(self) -> float:
        """Machine CPU use (% of all cores) before a session: other users' work on this shared machine."""
        deadline = time.monotonic() + self.args.quiet_wait
        while True:
            busy = await asyncio.to_thread(psutil.cpu_percent, 2.0)
            if busy < self.args.quiet_below or time.monotonic() > deadline:
                if busy >= self.args.quiet_below:
                    log(f"  the machine is still {busy:.0f}% busy with other work: going on (noise)")
                return busy
            log(f"  machine {busy:.0f}% busy with other work: waiting")

    def next_port(self) -> int:
        self.port += 10
        return self.port

    @contextlib.asynccontextmanager
    async def session(
        self,
        variant: str,
        n: int,
        rooms: int,
        *,
        slow_index: int | None = None,
        extra_env: dict | None = None,
        before_connect=None,
    ):
        server = publisher = None
        workers: list[Proc] = []
        background = await self.wait_quiet()
        try:
            if variant == "textbook-uvicorn":
                clean_redis()
            env = {**(self.args.bros_env if variant.startswith("bros-") else {}), **(extra_env or {})}
            code = code_fingerprint()
            server = await start_server(variant, self.next_port(), self.logdir, env)
            publisher = await start_publisher(server.kind, self.logdir, variant)
            names = room_names(server.kind, rooms)
            per_room = max(1, n // rooms)
            room_of = [min(i // per_room, rooms - 1) for i in range(n)]
            specs = [client_spec(server, i, names[room_of[i]]) for i in range(n) if i != slow_index]
            k = max(1, min(self.args.client_procs, n))
            chunks = [list(range(len(specs)))[j::k] for j in range(k)]  # positions in `specs`
            for j in range(k):
                w = Proc(
                    f"clients-{variant}-{j}",
                    [PYTHON, str(BENCH / "loadclient.py")],
                    log_path=self.logdir / f"clients-{variant}-{j}.log",
                    pipes=True,
                )
                await w.start()
                await w.read(timeout=30)
                workers.append(w)
            if before_connect is not None:
                await before_connect(server)
            t0 = time.monotonic()
            cpu0 = cpu_snapshot(server, workers, publisher)
            answers = await asyncio.gather(
                *(
                    w.request(
                        {
                            "cmd": "connect",
                            "specs": [specs[i] for i in chunk],
                            "parser": self.args.parser,
                            "concurrency": self.args.connect_concurrency,
                            "timeout": 60.0,
                        },
                        timeout=600,
                    )
                    for w, chunk in zip(workers, chunks, strict=True)
                )
            )
            for w, chunk in zip(workers, chunks, strict=True):
                w.chunk = chunk
            wall = time.monotonic() - t0
            connect_cpu = cpu_pct(cpu0, cpu_snapshot(server, workers, publisher))
            times = sorted(t for a in answers for t in a["times"])
            connect = {
                "n": n,
                "connected": sum(a["connected"] for a in answers),
                "failed": sum(a["failed"] for a in answers),
                "errors": _merge_counts(a["errors"] for a in answers),
                "wall_s": round(wall, 2),
                "per_s": round(sum(a["connected"] for a in answers) / wall, 1) if wall else None,
                "p50_ms": _ms(percentile(times, 50)),
                "p99_ms": _ms(percentile(times, 99)),
                "cpu_pct": connect_cpu,
                "background_cpu_pct": background,
                "code": code,
            }
            sess = Session(variant, server, publisher, workers, names, room_of, connect=connect)
            if slow_index is not None:  # connected later by the scenario, reading paused at once
                sess.slow.add(slow_index)
                sess.slow_spec = client_spec(server, slow_index, names[room_of[slow_index]], rcvbuf=4096)
            log(
                f"  {variant}: {connect['connected']}/{n} connected in {connect['wall_s']} s "
                f"({connect['per_s']}/s, p99 {connect['p99_ms']} ms), "
                f"failed {connect['failed']} {connect['errors'] or ''} cpu {connect_cpu}"
            )
            yield sess
        finally:
            for w in workers:
                with contextlib.suppress(Exception):
                    if w.alive():
                        await asyncio.wait_for(w.request({"cmd": "close"}), 10)
                await w.stop()
            if publisher is not None:
                await publisher.stop()
            if server is not None:
                for p in server.procs:
                    await p.stop()

    # -- scenarios ---------------------------------------------------------------------------------

    async def throughput(self, variant: str, n: int) -> dict:
        a = self.args
        base = a.start_rate.get(n, max(0.5, 4000 / n))
        async with self.session(variant, n, 1) as s:
            steps, best, fail = [], None, None
            rate = base
            tried = 0
            while tried < a.max_steps:
                tried += 1
                count = max(a.min_events, int(round(rate * a.step_seconds)))
                mode = a.bros_publish if s.server.kind == "bros" else None
                r = await s.step(rate=rate, count=count, mode=mode)
                self.log_step(variant, f"N={n}", r)
                if not r["passed"] and r["open"] == r["clients"] and r["cpu_pct"]["other"] > a.noise_retry:
                    # Other users' processes took CPU during this step: measure it once more.
                    log(f"  other processes used {r['cpu_pct']['other']}% CPU during a failed step: repeating it")
                    r["repeated"] = True
                    steps.append(r)
                    await asyncio.sleep(a.settle)
                    r = await s.step(rate=rate, count=count, mode=mode)
                    self.log_step(variant, f"N={n} again", r)
                steps.append(r)
                if r["open"] < r["clients"]:
                    fail = rate
                    break  # connections were closed: later steps would measure fewer clients
                if r["passed"]:
                    best = r if best is None or r["delivered_per_s"] > best["delivered_per_s"] else best
                    if fail is None:
                        rate *= 2
                    else:
                        if fail / rate < a.ramp_precision:
                            break
                        rate = math.sqrt(rate * fail)
                else:
                    fail = rate if fail is None else min(fail, rate)
                    low = best["rate"] if best else None
                    if low is None:
                        if rate <= base / 4 + 1e-9:
                            break
                        rate = rate / 4
                    elif fail / low < a.ramp_precision:
                        break
                    else:
                        rate = math.sqrt(low * fail)
                    await asyncio.sleep(a.settle)
            row = {
                "scenario": "throughput",
                "variant": variant,
                "n": n,
                "connect": s.connect,
                "sustained_per_s": best["delivered_per_s"] if best else 0.0,
                "sustained_rate": best["rate"] if best else None,
                "sustained_step": best,
                "max_per_s": max((r["delivered_per_s"] for r in steps), default=0.0),
                "steps": steps,
            }
            self.record(row)
            if "burst" in a.scenarios and n == a.burst_clients and variant in a.burst_variants:
                # The burst reuses these connections when they are all still open (saves a connect storm).
                await asyncio.sleep(a.settle)
                prog = await s.all_workers({"cmd": "progress"})
                if sum(p["open"] for p in prog) == n:
                    await self.burst_steps(s, variant)
            return row

    async def burst(self, variant: str) -> list[dict]:
        async with self.session(variant, self.args.burst_clients, 1) as s:
            return await self.burst_steps(s, variant)

    async def burst_steps(self, s: Session, variant: str) -> list[dict]:
        a = self.args
        rows = []
        modes = a.burst_modes if s.server.kind == "bros" else [None]
        for mode in modes:
            r = await s.step(rate=0, count=a.burst_events, mode=mode, drain_max=90.0, stall=10.0)
            self.log_step(variant, f"burst {mode or ''}", r)
            row = {
                "scenario": "burst",
                "variant": variant,
                "n": len(s.room_of),
                "mode": mode,
                "connect": s.connect,
                **r,
            }
            self.record(row)
            rows.append(row)
            await asyncio.sleep(a.settle)
        self.burst_done.add(variant)
        return rows

    async def rooms(self, variant: str) -> list[dict]:
        a = self.args
        rows = []
        n = a.rooms * a.room_size
        async with self.session(variant, n, a.rooms) as s:
            modes = ["outbox"] if s.server.kind == "bros" else [None]
            i = 0
            while i < len(modes):
                mode = modes[i]
                r = await s.step(
                    rate=a.rooms_rate, count=int(a.rooms_rate * a.rooms_seconds), mode=mode, drain_max=20.0, stall=5.0
                )
                self.log_step(variant, f"rooms {mode or ''}", r)
                row = {
                    "scenario": "rooms",
                    "variant": variant,
                    "n": n,
                    "rooms": a.rooms,
                    "mode": mode,
                    "connect": s.connect,
                    **r,
                }
                self.record(row)
                rows.append(row)
                if mode == "outbox" and (r["pub_rate"] or 0) < 0.95 * a.rooms_rate:
                    log(f"  outbox publisher reached {r['pub_rate']:.0f}/s < {a.rooms_rate}/s: repeating in batch mode")
                    modes.append("batch")
                i += 1
                await asyncio.sleep(a.settle)
        return rows

    async def slow(self, variant: str) -> dict:
        a = self.args
        env = {"REALTIME_QUEUE_LIMIT": str(a.slow_queue_limit)} if a.slow_queue_limit else {}
        async with self.session(variant, a.slow_clients, 1, slow_index=a.slow_clients - 1, extra_env=env) as s:
            mode = a.bros_publish if s.server.kind == "bros" else None
            count = int(a.slow_rate * a.slow_seconds)
            base = await s.step(
                rate=a.slow_rate, count=int(a.slow_rate * a.slow_baseline_seconds), pad=a.slow_pad, mode=mode
            )
            self.log_step(variant, "slow: baseline", base)
            holder = s.workers[0]
            joined = await holder.request({"cmd": "connect", "specs": [s.slow_spec], "pause": True}, timeout=120)
            ports = joined["ports"]
            if joined["failed"] or len(ports) != 1:
                raise RuntimeError(f"the slow client did not connect: {joined['errors']}")
            t_slow = time.time()
            r = await s.step(rate=a.slow_rate, count=count, pad=a.slow_pad, mode=mode)
            sockets = socket_queues(ports)
            self.log_step(variant, "slow: 1 stalled", r)
            slow_report = (await holder.request({"cmd": "resume", "wait": 5.0}))["slow"]
            too_slow_logs = count_log_lines(s.server, r"too slow")
            row = {
                "scenario": "slow",
                "variant": variant,
                "n": a.slow_clients,
                "connect": s.connect,
                "baseline": base,
                "with_slow": r,
                "slow_client": slow_report,
                "server_too_slow_logs": too_slow_logs,
                "slow_started": t_slow,
                "slow_socket_queues": sockets,
                "queue_limit": a.slow_queue_limit if s.server.kind == "bros" else None,
            }
            self.record(row)
            log(f"  {variant}: slow client -> {slow_report}; server 'too slow' log lines: {too_slow_logs}")
            return row

    async def profile(self, variant: str) -> dict:
        """py-spy on the server(s): during the connect storm, then during a steady stream."""
        a = self.args
        holder: dict = {}

        async def during_connect(server):
            holder["spies"] = await start_spies(server, self.logdir, "connect")

        async with self.session(variant, a.profile_n, 1, before_connect=during_connect) as s:
            connect_profile = await stop_spies(holder["spies"])
            spies = await start_spies(s.server, self.logdir, "stream")
            r = await s.step(rate=a.profile_rate, count=int(a.profile_rate * a.profile_seconds), mode=a.bros_publish)
            stream_profile = await stop_spies(spies)
            self.log_step(variant, "profile", r)
            row = {
                "scenario": "profile",
                "variant": variant,
                "n": a.profile_n,
                "connect": s.connect,
                "step": r,
                "connect_profile": connect_profile,
                "stream_profile": stream_profile,
            }
            self.record(row)
            for title, prof in (("connect", connect_profile), ("stream", stream_profile)):
                log(
                    f"  py-spy {title}: {prof['samples']} samples; top self: "
                    + "; ".join(f"{k} {v}%" for k, v in prof["self"][:8])
                )
            return row

    async def connect_storm(self, variant: str, round_no: int) -> dict:
        """One connect storm: the session's connect measurement is the whole result."""
        async with self.session(variant, self.args.connect_n, 1) as s:
            row = {"scenario": "connect", "variant": variant, "round": round_no, "n": self.args.connect_n, **s.connect}
            self.record(row)
            return row

    def log_step(self, variant: str, what: str, r: dict) -> None:
        log(
            f"  {variant:17} {what:14} rate {r['rate']:>7.1f}/s pub {fmt(r['pub_rate'], '.0f')}/s "
            f"delivered {r['delivered_per_s']:>8.0f}/s lost {r['lost']} extra {r['extra']} gaps {r['seq_gaps']} "
            f"last-client p50/p99 {r['last_client_p50_ms']}/{r['last_client_p99_ms']} ms "
            f"cpu srv {r['cpu_pct']['server']}% cli {r['cpu_pct']['clients']}% pub {r['cpu_pct']['publisher']}% "
            f"redis {r['cpu_pct']['redis']}% pg {r['cpu_pct']['postgres']}% other {r['cpu_pct']['other']}% "
            f"rss {r['server_rss_mb']} MB "
            f"{'PASS' if r['passed'] else 'fail'}"
        )


def socket_queues(ports: list[int]) -> list[str]:
    """`ss` lines (Recv-Q / Send-Q, memory) of the slow client's connections, both ends."""
    out = []
    for port in ports:
        res = subprocess.run(
            ["ss", "-tmn", f"sport = :{port} or dport = :{port}"], capture_output=True, text=True, timeout=10
        )
        out += [" ".join(line.split()) for line in res.stdout.splitlines()[1:] if line.strip()]
    return out


def count_log_lines(server: Server, pattern: str) -> int:
    rx = re.compile(pattern)
    total = 0
    for p in server.procs:
        if p.log_path and p.log_path.exists():
            total += sum(1 for line in p.log_path.read_text(errors="replace").splitlines() if rx.search(line))
    return total


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


# -- report -----------------------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |",
        "| " + " | ".join("-" * w for w in widths) + " |",
    ]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells[1:]]
    return "\n".join(out)


def us_per_delivery(step: dict) -> float | None:
    """Server CPU time per delivered message (µs): robust to other load on the machine."""
    cpu = (step.get("cpu_pct") or {}).get("server")
    if not cpu or not step.get("delivered_per_s"):
        return None
    return cpu / 100 / step["delivered_per_s"] * 1e6


def median(values: list[float]) -> float | None:
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def report(rows: list[dict]) -> str:
    parts = []
    tp = [r for r in rows if r["scenario"] == "throughput"]
    for n in sorted({r["n"] for r in tp}):
        sel = [r for r in tp if r["n"] == n]
        sio = next((r for r in sel if r["variant"] == "socketio"), None)
        sio_us = median([us_per_delivery(x) for x in sio["steps"]]) if sio else None
        body = []
        for r in sel:
            b = r["sustained_step"] or {}
            ratio = (r["sustained_per_s"] / sio["sustained_per_s"]) if sio and sio["sustained_per_s"] else None
            ratio_max = (r["max_per_s"] / sio["max_per_s"]) if sio and sio["max_per_s"] else None
            us = median([us_per_delivery(x) for x in r["steps"]])
            other = median([(x.get("cpu_pct") or {}).get("other") for x in r["steps"]])
            body.append(
                [
                    LABELS[r["variant"]],
                    f"{r['connect']['connected']} in {r['connect']['wall_s']} s",
                    f"{r['sustained_per_s']:.0f}",
                    fmt(r["sustained_rate"], ".1f"),
                    fmt(ratio, ".2f"),
                    f"{r['max_per_s']:.0f}",
                    fmt(ratio_max, ".2f"),
                    b.get("last_client_p50_ms"),
                    b.get("last_client_p99_ms"),
                    fmt(us, ".1f"),
                    fmt(sio_us / us if sio_us and us else None, ".2f"),
                    b.get("server_rss_mb") or (r["steps"][-1]["server_rss_mb"] if r["steps"] else None),
                    sum(x["lost"] for x in r["steps"]),
                    len(r["steps"]),
                    fmt(other, ".0f"),
                ]
            )
        parts.append(
            f"### throughput, N = {n}, one stream\n\n"
            + table(
                [
                    "variant",
                    "connected",
                    "sustained deliv/s",
                    "at events/s",
                    "x socket.io",
                    "max deliv/s",
                    "max x sio",
                    "last-client p50 ms",
                    "p99 ms",
                    "srv CPU us/deliv",
                    "CPU efficiency x sio",
                    "srv RSS MB",
                    "lost (all steps)",
                    "steps",
                    "other load % (median)",
                ],
                body,
            )
        )
    for scen in ("burst", "rooms"):
        sel = [r for r in rows if r["scenario"] == scen]
        if not sel:
            continue
        body = [
            [
                LABELS[r["variant"]],
                r.get("mode") or "-",
                r["clients"],
                r["published"],
                fmt(r["pub_rate"], ".0f"),
                r["expected"],
                r["received"],
                r["lost"],
                r["extra"],
                r["seq_gaps"],
                f"{r['delivered_per_s']:.0f}",
                r["last_client_p50_ms"],
                r["last_client_p99_ms"],
                r["last_client_max_ms"],
                r["cpu_pct"]["server"],
                r["cpu_pct"].get("other"),
                "yes" if r["lost"] == 0 and r["extra"] == 0 else "NO",
            ]
            for r in sel
        ]
        parts.append(
            f"### {scen}\n\n"
            + table(
                [
                    "variant",
                    "publish",
                    "clients",
                    "events",
                    "pub events/s",
                    "expected",
                    "received",
                    "lost",
                    "extra",
                    "seq gaps",
                    "deliv/s",
                    "last-client p50 ms",
                    "p99 ms",
                    "max ms",
                    "srv CPU %",
                    "other load %",
                    "zero loss",
                ],
                body,
            )
        )
    parts += connect_report([r for r in rows if r["scenario"] == "connect"])
    sel = [r for r in rows if r["scenario"] == "slow"]
    if sel:
        body = []
        for r in sel:
            b, w = r["baseline"], r["with_slow"]
            sc = r["slow_client"][0] if r["slow_client"] else {}
            body.append(
                [
                    LABELS[r["variant"]],
                    b["lost"],
                    b["last_client_p99_ms"],
                    w["lost"],
                    w["last_client_p50_ms"],
                    w["last_client_p99_ms"],
                    w["open"],
                    sc.get("close_code"),
                    sc.get("open"),
                    sc.get("received"),
                    r["server_too_slow_logs"],
                ]
            )
        parts.append(
            "### slow client\n\n"
            + table(
                [
                    "variant",
                    "baseline lost",
                    "baseline p99 ms",
                    "others lost",
                    "others p50 ms",
                    "others p99 ms",
                    "others open",
                    "slow close code",
                    "slow still open",
                    "slow got",
                    "server 'too slow' logs",
                ],
                body,
            )
        )
    return "\n\n".join(parts)


def connect_report(sel: list[dict]) -> list[str]:
    """The connect storms: per variant the median over its rounds, and its ratio to socket.io's."""
    if not sel:
        return []
    variants = list(dict.fromkeys(r["variant"] for r in sel))
    walls = {v: median([r["wall_s"] for r in sel if r["variant"] == v]) for v in variants}
    sio = walls.get("socketio")
    body = []
    for v in variants:
        got = [r for r in sel if r["variant"] == v]
        body.append(
            [
                LABELS[v],
                got[0]["n"],
                len(got),
                walls[v],
                " / ".join(str(r["wall_s"]) for r in got),
                median([r["p50_ms"] for r in got if r["p50_ms"] is not None]),
                median([r["p99_ms"] for r in got if r["p99_ms"] is not None]),
                sum(r["failed"] for r in got),
                round(walls[v] / sio, 2) if sio else None,
                median([r["background_cpu_pct"] for r in got]),
            ]
        )
    headers = ["variant", "N", "rounds", "median s", "each round s", "p50 ms", "p99 ms", "failed", "x socket.io"]
    return ["### connect storm\n\n" + table([*headers, "other load %"], body)]


# -- main ---------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default="throughput,burst,rooms,slow")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"of {VARIANTS + OPTIONAL_VARIANTS}")
    p.add_argument("--sizes", default="1000,5000", help="throughput: connection counts")
    p.add_argument("--burst-variants", default="all", help="variants for 'burst' (of --variants; 'all')")
    p.add_argument(
        "--rooms-variants",
        default="bros-uvicorn,textbook-uvicorn,socketio",
        help="variants for 'rooms' (of --variants; 'all')",
    )
    p.add_argument(
        "--slow-variants",
        default="bros-uvicorn,textbook-uvicorn,socketio",
        help="variants for 'slow' (of --variants; 'all')",
    )
    p.add_argument("--client-procs", type=int, default=2, help="load-client processes")
    p.add_argument("--parser", choices=["fast", "websockets"], default="fast")
    p.add_argument(
        "--connect-concurrency",
        type=int,
        default=40,
        help="handshakes in flight per client process (redis-py's async pools stop at 100 connections)",
    )
    p.add_argument("--bros-publish", choices=["outbox", "batch"], default="outbox")
    p.add_argument(
        "--bros-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the BROS servers (e.g. REALTIME_HEADS_INTERVAL=3600); repeatable",
    )
    p.add_argument("--burst-modes", default="outbox,batch", help="BROS publish modes for the burst")
    p.add_argument("--step-seconds", type=float, default=4.0)
    p.add_argument("--min-events", type=int, default=8)
    p.add_argument("--max-steps", type=int, default=9)
    p.add_argument(
        "--ramp-precision", type=float, default=1.3, help="stop bisecting when fail/pass rates are closer than this"
    )
    p.add_argument(
        "--quiet-below",
        type=float,
        default=30.0,
        help="before each server start, wait (at most --quiet-wait s) until the machine is less busy than this %%",
    )
    p.add_argument("--quiet-wait", type=float, default=60.0)
    p.add_argument("--start-rate", default="1000:10,5000:2", help="throughput: first rate (events/s) per N")
    p.add_argument("--settle", type=float, default=1.0)
    p.add_argument(
        "--noise-retry",
        type=float,
        default=30.0,
        help="repeat a failed throughput step once if other processes used more than this %% CPU during it",
    )
    p.add_argument("--burst-clients", type=int, default=1000)
    p.add_argument("--burst-events", type=int, default=300)
    p.add_argument("--rooms", type=int, default=200)
    p.add_argument("--room-size", type=int, default=25)
    p.add_argument("--rooms-rate", type=float, default=500)
    p.add_argument("--rooms-seconds", type=float, default=20)
    p.add_argument("--slow-clients", type=int, default=1000)
    p.add_argument("--slow-rate", type=float, default=10)
    p.add_argument("--slow-seconds", type=float, default=30)
    p.add_argument("--slow-baseline-seconds", type=float, default=6)
    p.add_argument("--slow-pad", type=int, default=1900, help="text bytes per event in the slow scenario")
    p.add_argument(
        "--slow-queue-limit", type=int, default=100, help="REALTIME_QUEUE_LIMIT for BROS in 'slow' (0: the default)"
    )
    p.add_argument("--connect-n", type=int, default=5000, help="connect: clients per storm")
    p.add_argument("--connect-rounds", type=int, default=3, help="connect: storms per variant")
    p.add_argument("--profile-n", type=int, default=5000, help="profile: connections")
    p.add_argument("--profile-rate", type=float, default=8, help="profile: events/s")
    p.add_argument("--profile-seconds", type=float, default=15, help="profile: seconds of steady stream")
    p.add_argument("--port-base", type=int, default=9300)
    p.add_argument("--quick", action="store_true", help="small sizes to check the harness")
    p.add_argument("--skip-setup", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--report", metavar="JSONL", help="only print the tables of an earlier results file")
    args = p.parse_args(argv)
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    args.variants = [v for v in args.variants.split(",") if v]
    for v in args.variants:
        if v not in VARIANTS + OPTIONAL_VARIANTS:
            p.error(f"unknown variant {v}")
    args.sizes = [int(x) for x in args.sizes.split(",") if x]
    for name in ("burst_variants", "rooms_variants", "slow_variants"):
        chosen = [v for v in getattr(args, name).split(",") if v]
        setattr(args, name, [v for v in args.variants if v in chosen or getattr(args, name) == "all"])
    args.start_rate = {int(k): float(v) for k, v in (x.split(":") for x in args.start_rate.split(",") if x)}
    args.burst_modes = [m for m in args.burst_modes.split(",") if m]
    args.bros_env = dict(item.split("=", 1) for item in args.bros_env)
    if args.quick:
        args.sizes = [100, 300] if args.sizes == [1000, 5000] else args.sizes
        args.start_rate = {100: 20, 300: 10}
        args.burst_clients, args.rooms, args.room_size, args.rooms_rate, args.rooms_seconds = 100, 20, 5, 100, 5
        args.slow_clients, args.slow_seconds, args.slow_baseline_seconds = 100, 8, 3
        args.max_steps, args.step_seconds = 3, 3
        args.connect_n = min(args.connect_n, 300)
    return args


async def main_async(args) -> int:
    runner = Runner(args)
    facts = machine_facts()
    runner.record({"scenario": "meta", "argv": sys.argv[1:], "facts": facts, "bros_env": args.bros_env})
    log(f"machine: {facts}")
    log(f"results: {runner.out_path}; server logs: {runner.logdir}")
    started = time.monotonic()
    try:
        if "throughput" in args.scenarios:
            for n in args.sizes:
                for v in args.variants:
                    log(f"throughput N={n}: {v}")
                    await run_guarded(runner, "throughput", v, runner.throughput(v, n))
        if "burst" in args.scenarios:
            for v in args.burst_variants:
                if v not in runner.burst_done:
                    log(f"burst: {v}")
                    await run_guarded(runner, "burst", v, runner.burst(v))
        if "rooms" in args.scenarios:
            for v in args.rooms_variants:
                log(f"rooms: {v}")
                await run_guarded(runner, "rooms", v, runner.rooms(v))
        if "slow" in args.scenarios:
            for v in args.slow_variants:
                log(f"slow: {v}")
                await run_guarded(runner, "slow", v, runner.slow(v))
        if "connect" in args.scenarios:
            for r in range(args.connect_rounds):  # alternating, so that a busy spell hits every variant
                for v in args.variants if r % 2 == 0 else reversed(args.variants):
                    log(f"connect round {r + 1}: {v}")
                    await run_guarded(runner, "connect", v, runner.connect_storm(v, r + 1))
        if "profile" in args.scenarios:
            for v in args.variants:
                if v.startswith("bros-"):
                    log(f"profile: {v}")
                    await run_guarded(runner, "profile", v, runner.profile(v))
    finally:
        for p in list(Proc.registry):
            await p.stop(grace=1.0)
    text = report([r for r in runner.rows if r["scenario"] != "meta"])
    print("\n" + text + "\n")
    (runner.out_path.with_suffix(".md")).write_text(text + "\n")
    log(f"done in {time.monotonic() - started:.0f} s; {runner.out_path}")
    return 0


async def run_guarded(runner: Runner, scenario: str, variant: str, coro) -> None:
    try:
        await coro
    except Exception as exc:
        log(f"  {scenario} {variant} FAILED: {type(exc).__name__}: {exc}")
        runner.record({"scenario": f"{scenario}-error", "variant": variant, "error": f"{type(exc).__name__}: {exc}"})


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        rows = [json.loads(line) for line in Path(args.report).read_text().splitlines() if line.strip()]
        print(report([r for r in rows if r.get("scenario") in ("throughput", "burst", "rooms", "slow", "connect")]))
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, 65536))
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if "socketio" in args.variants and not shutil.which("node"):
        print("node is needed for the socket.io variant", file=sys.stderr)
        return 2
    if not args.skip_setup:
        prepare(args)
    try:
        return asyncio.run(main_async(args))
    except KeyboardInterrupt:
        return 130
    finally:
        Proc.kill_all_sync()


if __name__ == "__main__":
    sys.exit(main())
