"""Fan-out benchmark: BROS (uvicorn, 2 processes, daphne) vs the textbook Channels pattern vs socket.io.

    .venv/bin/python bench/fanout.py                      # the full suite, every variant 3 times (long)
    .venv/bin/python bench/fanout.py --quick              # N=1000, one run, short steps: check the harness
    .venv/bin/python bench/fanout.py --scenarios throughput --variants bros-uvicorn,socketio --ref main
    .venv/bin/python bench/fanout.py --scenarios burst --variants bros-uvicorn,socketio

Trustworthy by construction (issue 13; docs/benchmarks.md, "How to run"): the BROS servers run
production's command line; with >= 2 cores each server under test is pinned alone on the last core
and everything else (this runner, load clients, publishers, Redis, PostgreSQL) on the others
(--pin, --pin-services); every variant runs --repeat times, interleaved, and the summary shows
median [min-max] and calls a ratio only when the spreads do not overlap; --ref GIT_REF adds
`bros-uvicorn@GIT_REF` to the same run.

Everything runs on loopback; every loop is bounded in time and count and stops by itself. The
runner starts each server variant itself, logs in (BROS), starts load-client processes
(`bench/loadclient.py`) and a publisher per variant (`bench/publish_bros.py`,
`python -m bench.textbook publish`, `bench/socketio/publish.js`), measures, and kills every
process it started (also on Ctrl-C). Results: a table per scenario on stdout and JSON lines in
`bench/results/fanout-<time>.jsonl`. See docs/benchmarks.md.

Scenarios
- fixed: per N and variant: connect storm (time, p99), RSS per idle connection, idle server CPU, and
  one step at --fixed-deliveries per second: server CPU us per delivery.
- throughput: the same, then the publish rate is raised step by step (x2, then bisected)
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
import atexit
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
import statistics
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
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/bros_bench",  # --db, --redis-url
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "ALLOWED_HOSTS": "127.0.0.1,localhost",
    "DEBUG": "0",
    "SECURE_COOKIES": "0",
    "REDIS_PREFIX": PREFIX,
    "LOG_LEVEL": "WARNING",
    "PYTHONUNBUFFERED": "1",
}

SHARED_CORE = {"bros-uvicorn-2p", "bros-uvicorn-w2"}  # two server processes on the one server core when pinned
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
        self,
        name: str,
        argv: list[str],
        *,
        env: dict | None = None,
        log_path: Path | None = None,
        pipes: bool = False,
        cwd: Path = REPO,
        cpus: set[int] | None = None,
    ):
        self.name = name
        # Pinned before exec (taskset), so every thread and child the process makes inherits it.
        self.argv = [*taskset(cpus), *argv]
        self.cwd = cwd
        self.cpus = cpus
        self.env = {**os.environ, **BASE_ENV, **(env or {})}
        self.log_path = log_path
        self.pipes = pipes
        self.proc: asyncio.subprocess.Process | None = None
        self._log = None

    async def start(self) -> Proc:
        self._log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=str(self.cwd),
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


# -- CPU pinning --------------------------------------------------------------------------------------


@dataclass
class Pinning:
    """Which cores the servers under test get, and which everything else gets (None: not pinned)."""

    server: set[int] | None = None
    rest: set[int] | None = None
    services: str = "not pinned"

    @property
    def on(self) -> bool:
        return self.server is not None

    def describe(self) -> str:
        if not self.on:
            return "not pinned"
        return (
            f"servers under test on cpu {cpu_list(self.server)}; harness, load clients and publishers on cpu "
            f"{cpu_list(self.rest)}; Redis/PostgreSQL: {self.services}"
        )


PIN = Pinning()


def cpu_list(cpus: set[int] | None) -> str:
    return ",".join(str(c) for c in sorted(cpus or ()))


def taskset(cpus: set[int] | None) -> list[str]:
    return ["taskset", "-c", cpu_list(cpus)] if cpus else []


def plan_pinning(enabled: bool) -> Pinning:
    """The last core of this process's affinity for the server under test, the others for the rest."""
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled or len(cpus) < 2 or not shutil.which("taskset"):
        return Pinning()
    return Pinning(server={cpus[-1]}, rest=set(cpus[:-1]))


def tasks_of(pid: int) -> list[int]:
    """The thread ids of a process (affinity is per thread)."""
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def allowed_cpus(pids: list[int]) -> list[str]:
    """Every distinct CPU set the threads of these processes (and their children) may run on."""
    seen = set()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
                for tid in tasks_of(proc.pid):
                    with contextlib.suppress(OSError):
                        seen.add(cpu_list(os.sched_getaffinity(tid)))
    return sorted(seen)


class ServicePins:
    """Redis (:6379) and PostgreSQL moved to the non-server cores for the run, and put back at exit.

    Reversible: the original affinity of every thread touched is recorded and restored; PostgreSQL
    backends forked during the run inherit the postmaster's pinned set, so at exit every postgres
    process not recorded gets the postmaster's original set.
    """

    def __init__(self):
        self.original: dict[int, set[int]] = {}
        self.postgres_default: set[int] | None = None

    @staticmethod
    def targets() -> dict[str, list[int]]:
        out: dict[str, list[int]] = {"redis": [], "postgres": []}
        for p in psutil.process_iter(["name", "username", "cmdline"]):
            try:
                cmd = " ".join(p.info["cmdline"] or [])
                if (p.info["name"] or "").startswith("redis-server") and ":6379" in cmd:
                    out["redis"].append(p.pid)
                elif p.info["username"] == "postgres" and (p.info["name"] or "").startswith("postgres"):
                    out["postgres"].append(p.pid)
            except psutil.Error:
                pass
        return out

    def pin(self, cpus: set[int]) -> str:
        found = self.targets()
        if not found["redis"] and not found["postgres"]:
            return "not pinned (no redis-server :6379 / postgres processes found)"
        try:
            for pids in found.values():
                for pid in pids:
                    for tid in tasks_of(pid):
                        with contextlib.suppress(ProcessLookupError):
                            before = os.sched_getaffinity(tid)
                            os.sched_setaffinity(tid, cpus)
                            self.original.setdefault(tid, before)
        except PermissionError as exc:
            self.restore()
            return f"not pinned ({exc})"
        postmaster = min(found["postgres"], default=None)
        if postmaster is not None:
            self.postgres_default = self.original.get(postmaster)
        atexit.register(self.restore)
        return (
            f"pinned to cpu {cpu_list(cpus)} for the run ({len(found['redis'])} redis-server, "
            f"{len(found['postgres'])} postgres processes; restored at exit)"
        )

    def restore(self) -> None:
        original, self.original = self.original, {}
        for tid, cpus in original.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, cpus)
        if self.postgres_default:
            for pid in self.targets()["postgres"]:
                for tid in tasks_of(pid):
                    if tid not in original:
                        with contextlib.suppress(OSError):
                            os.sched_setaffinity(tid, self.postgres_default)
        if original:
            log(f"Redis/PostgreSQL affinity restored ({len(original)} threads)")


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


def run_checked(argv: list[str], env: dict | None = None, cwd: Path = REPO) -> str:
    out = subprocess.run(
        argv, cwd=str(cwd), env={**os.environ, **BASE_ENV, **(env or {})}, capture_output=True, text=True, timeout=300
    )
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def prepare(args) -> None:
    """Idempotent: the benchmark's database, migrations, demo data, static manifest, npm packages."""
    log(f"setup: database {args.db}, migrate, seed_demo, collectstatic")
    import psycopg
    from psycopg import sql

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        if not conn.execute("select 1 from pg_database where datname = %s", [args.db]).fetchone():
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(args.db)))
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


def code_fingerprint(root: Path = REPO, commit: str | None = None) -> dict:
    """What BROS code a server started with: the tree changes while others work in it."""
    import hashlib

    digest = hashlib.sha1()
    for path in sorted([*(root / "realtime").glob("*.py"), root / "bros" / "asgi.py", root / "bros" / "settings.py"]):
        digest.update(path.name.encode() + path.read_bytes())
    if commit is None:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=str(REPO), capture_output=True, text=True)
        commit = head.stdout.strip()
    return {"git": commit, "realtime_sha1": digest.hexdigest()[:12]}


def export_ref(ref: str) -> tuple[str, Path]:
    """The tracked files of git `ref` in a new folder under /tmp (as bench/board/run.py --compare-ref does).

    Its `bench/` is replaced by this harness's, so the publisher and textbook code are the same for
    every variant and only the server code differs. Removed at exit by the caller.
    """
    import tempfile

    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    folder = Path(tempfile.mkdtemp(prefix=f"bros-fanout-{commit[:8]}-"))
    archive = subprocess.Popen(["git", "archive", "--format=tar", commit], cwd=REPO, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(folder)], stdin=archive.stdout, check=True)
    archive.stdout.close()
    if archive.wait() != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"git archive {commit} failed")
    shutil.rmtree(folder / "bench", ignore_errors=True)
    shutil.copytree(BENCH, folder / "bench", ignore=shutil.ignore_patterns("results", "node_modules", "__pycache__"))
    return commit, folder


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
    ws: str | None = None  # uvicorn's --ws

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.alive()]


# What production runs (README's process list, dev.py's web process): BROS's WebSocket protocol
# class (uvicorn's sans-I/O one plus the cut-off of clients that stopped reading) and the lifespan.
PRODUCTION_WS = "realtime.uvicorn_protocol:WebSocketProtocol"
STOCK_WS = "websockets-sansio"  # the textbook variant, and a --ref tree older than the protocol class


def uvicorn_argv(ws: str, *, lifespan: bool) -> list[str]:
    argv = [str(VENV_BIN / "uvicorn"), "--ws", ws, "--host", HOST, "--log-level", "warning", "--no-access-log"]
    return [*argv, "--lifespan", "on"] if lifespan else argv


def bros_ws(root: Path) -> str:
    """The production `--ws` class when the tree has it (a --ref tree may predate it)."""
    return PRODUCTION_WS if (root / "realtime" / "uvicorn_protocol.py").exists() else STOCK_WS


def split_variant(variant: str) -> tuple[str, str | None]:
    """`bros-uvicorn@REF` -> ("bros-uvicorn", "REF"); a plain variant has no ref."""
    base, _, ref = variant.partition("@")
    return base, (ref or None)


def variant_label(variant: str, pinned: bool = False) -> str:
    base, ref = split_variant(variant)
    label = LABELS[base] + (f" @ {ref}" if ref else "")
    if pinned and base in SHARED_CORE:
        label += " (shares a core)"
    return label


async def start_server(variant: str, port: int, logdir: Path, extra_env: dict, root: Path = REPO) -> Server:
    """Start a variant's server(s) from the tree at `root` (this one, or a --ref export), pinned if asked."""
    base, _ = split_variant(variant)
    cpus = PIN.server
    uvicorn = uvicorn_argv(STOCK_WS, lifespan=False)
    slug = variant.replace("@", "-at-").replace("/", "_")
    if base in ("bros-uvicorn", "bros-uvicorn-2p", "bros-uvicorn-w2"):
        count = 2 if base == "bros-uvicorn-2p" else 1
        procs, ports = [], []
        for i in range(count):
            argv = [*uvicorn_argv(bros_ws(root), lifespan=True), "--port", str(port + i), "bros.asgi:application"]
            if base == "bros-uvicorn-w2":
                argv += ["--workers", "2"]
            log_path = logdir / f"{slug}-{i}.log"
            procs.append(Proc(f"{variant}#{i}", argv, env=extra_env, log_path=log_path, cwd=root, cpus=cpus))
            ports.append(port + i)
        server = Server(variant, procs, ports, "bros")
    elif base == "bros-daphne":
        argv = [str(VENV_BIN / "daphne"), "-b", HOST, "-p", str(port), "-v", "0", "bros.asgi:application"]
        proc = Proc(variant, argv, env=extra_env, log_path=logdir / f"{slug}.log", cwd=root, cpus=cpus)
        server = Server(variant, [proc], [port], "bros")
    elif base == "textbook-uvicorn":
        argv = [*uvicorn, "--port", str(port), "bench.textbook:application"]
        env = {"DJANGO_SETTINGS_MODULE": "bench.textbook_settings", **extra_env}
        proc = Proc(variant, argv, env=env, log_path=logdir / f"{slug}.log", cpus=cpus)
        server = Server(variant, [proc], [port], "textbook")
    elif base == "socketio":
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
        server = Server(variant, [Proc(variant, argv, log_path=logdir / f"{slug}.log", cpus=cpus)], [port], "sio")
    else:
        raise ValueError(variant)
    server.ws = bros_ws(root) if base.startswith("bros-uvicorn") else (STOCK_WS if "uvicorn" in base else None)
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


async def start_publisher(kind: str, logdir: Path, variant: str, root: Path = REPO) -> Proc:
    if kind == "bros":
        # The tree's own outbox code; a --ref export carries this harness's bench/ (see export_ref).
        argv = [PYTHON, str(root / "bench" / "publish_bros.py")]
        env = {}
    elif kind == "textbook":
        argv = [PYTHON, "-m", "bench.textbook", "publish"]
        env = {"DJANGO_SETTINGS_MODULE": "bench.textbook_settings"}
    else:
        argv = ["node", str(BENCH / "socketio" / "publish.js"), "--redis", BASE_ENV["REDIS_URL"], "--key", SIO_KEY]
        env = {}
    slug = variant.replace("@", "-at-").replace("/", "_")
    proc = await Proc(
        f"publisher-{variant}", argv, env=env, log_path=logdir / f"publisher-{slug}.log", pipes=True, cwd=root
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


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_stat_cpu(pid: int) -> float | None:
    """utime + stime of one process from /proc/<pid>/stat, in seconds (all its threads)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()  # after "pid (comm) ": state is field 3
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds of these processes and their children (/proc/<pid>/stat)."""
    total = 0.0
    for pid in pids:
        try:
            tree = [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
        except psutil.Error:
            continue
        total += sum(proc_stat_cpu(p) or 0.0 for p in tree)
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
    db = BASE_ENV["DATABASE_URL"].rsplit("/", 1)[1]
    out: dict[str, list[int]] = {"redis": [], "postgres": []}
    for p in psutil.process_iter(["name", "username", "cmdline"]):
        try:
            name = p.info["name"] or ""
            cmd = " ".join(p.info["cmdline"] or [])
            if name.startswith("redis-server") and "6379" in cmd:
                out["redis"].append(p.pid)
            elif p.info["username"] == "postgres" and f" {db} " in f" {cmd} ":
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
        "harness": proc_stat_cpu(os.getpid()) or 0.0,
        "redis": _cpu_by_pid(services["redis"]),
        "postgres": _cpu_by_pid(services["postgres"]),
        "machine": _machine_busy(),
        "clients_each": {w.pid: proc_stat_cpu(w.pid) or 0.0 for w in workers if w.alive()},
        "percpu": _percpu_busy(),
        "t": time.monotonic(),
    }


PROCESS_KEYS = ("server", "clients", "publisher", "harness", "redis", "postgres")
CLIENT_CORE_LIMIT = 80.0  # % of a core: above it the load clients may be what limits a step


def cpu_pct(a: dict, b: dict) -> dict:
    """CPU use between two snapshots in % of one core (the machine figure too: 200 % = both cores busy).

    Also: `cpu_busy` per CPU (from /proc/stat), `server_core` (the pinned server core's busy %),
    and `client_core`, how busy the load clients' side is: the busiest client process (each runs
    one event loop) or the clients, publisher and harness together spread over their cores,
    whichever is higher. `client_core_over` flags a step where it passed CLIENT_CORE_LIMIT.
    """
    wall = b["t"] - a["t"]
    if wall <= 0:
        return {}
    out = {}
    for key in (*PROCESS_KEYS, "machine"):
        if isinstance(a[key], dict):
            used = sum(b[key][pid] - a[key][pid] for pid in b[key] if pid in a[key]) + sum(
                b[key][pid] for pid in b[key] if pid not in a[key] and b[key][pid] < wall
            )
        else:
            used = b[key] - a[key]
        out[key] = round(100 * used / wall, 1)
    # Whatever else ran on the machine meanwhile (other users' tests, servers): noise to report.
    out["other"] = round(out["machine"] - sum(out[k] for k in PROCESS_KEYS), 1)
    each = [
        100 * (b["clients_each"][pid] - a["clients_each"][pid]) / wall
        for pid in b["clients_each"]
        if pid in a["clients_each"]
    ]
    busy = {
        cpu: round(100 * (b["percpu"][cpu] - a["percpu"][cpu]) / wall, 1) for cpu in b["percpu"] if cpu in a["percpu"]
    }
    out["cpu_busy"] = busy
    rest_cores = len(PIN.rest) if PIN.on else (os.cpu_count() or 1)
    spread = (out["clients"] + out["publisher"] + out["harness"]) / rest_cores
    out["client_core"] = round(max([spread, *each]), 1)
    out["client_core_over"] = out["client_core"] > CLIENT_CORE_LIMIT
    out["server_core"] = busy.get(min(PIN.server)) if PIN.on else None
    return out


def _percpu_busy() -> dict[int, float]:
    """Busy seconds per CPU (/proc/stat)."""
    out = {}
    for cpu, t in enumerate(psutil.cpu_times(percpu=True)):
        out[cpu] = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)
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
            "server_cpu_s": round(cpu1["server"] - cpu0["server"], 3),
            # Server CPU time per message the clients received: the steadiest figure of a step.
            "us_per_delivery": round((cpu1["server"] - cpu0["server"]) / received * 1e6, 2) if received else None,
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
        self.burst_done: set[tuple[str, int]] = set()
        self.refs: dict[str, tuple[str, Path]] = {}  # --ref: ref -> (commit, exported tree)
        self.port = args.port_base

    def record(self, row: dict) -> None:
        row = {"time": dt.datetime.now().isoformat(timespec="seconds"), **row}
        self.rows.append(row)
        with open(self.out_path, "a") as f:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")

    async def wait_quiet(self) -> float:
        """Machine CPU use (% of all cores) before a session: other users' work on this shared machine.

        When pinned, the server's core must be quiet too: that is the core the next server gets.
        """
        deadline = time.monotonic() + self.args.quiet_wait
        while True:
            per_cpu = await asyncio.to_thread(psutil.cpu_percent, 2.0, True)
            busy = sum(per_cpu) / len(per_cpu)
            server_core = per_cpu[min(PIN.server)] if PIN.on and min(PIN.server) < len(per_cpu) else None
            worst = max(busy, server_core or 0.0)
            what = f"machine {busy:.0f}%" + (f", server core {server_core:.0f}%" if server_core is not None else "")
            if worst < self.args.quiet_below or time.monotonic() > deadline:
                if worst >= self.args.quiet_below:
                    log(f"  still busy with other work ({what}): going on (noise)")
                return busy
            log(f"  busy with other work ({what}): waiting")

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
            _, ref = split_variant(variant)
            root = self.refs[ref][1] if ref else REPO
            code = code_fingerprint(root, self.refs[ref][0][:12] if ref else None)
            server = await start_server(variant, self.next_port(), self.logdir, env, root)
            publisher = await start_publisher(server.kind, self.logdir, variant, root)
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
            rss_before = rss_mb(server.pids())
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
            connected = sum(a["connected"] for a in answers)
            # N sockets connected and subscribed, nothing published: the server's idle cost.
            idle0 = cpu_snapshot(server, workers, publisher)
            await asyncio.sleep(self.args.idle_seconds)
            idle_cpu = cpu_pct(idle0, cpu_snapshot(server, workers, publisher))
            rss_idle = rss_mb(server.pids())
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
                "ws": server.ws,
                "server_cpus_allowed": allowed_cpus(server.pids()),
                "clients_cpus_allowed": allowed_cpus([w.pid for w in workers]),
                "rss_before_mb": round(rss_before, 1),
                "rss_idle_mb": round(rss_idle, 1),
                "rss_per_conn_kb": round((rss_idle - rss_before) * 1024 / connected, 1) if connected else None,
                "idle_cpu_pct": idle_cpu,
            }
            sess = Session(variant, server, publisher, workers, names, room_of, connect=connect)
            if slow_index is not None:  # connected later by the scenario, reading paused at once
                sess.slow.add(slow_index)
                sess.slow_spec = client_spec(server, slow_index, names[room_of[slow_index]], rcvbuf=4096)
            log(
                f"  {variant}: {connect['connected']}/{n} connected in {connect['wall_s']} s "
                f"({connect['per_s']}/s, p99 {connect['p99_ms']} ms), "
                f"failed {connect['failed']} {connect['errors'] or ''} cpu {connect_cpu}; "
                f"RSS {connect['rss_before_mb']} -> {connect['rss_idle_mb']} MB idle "
                f"({connect['rss_per_conn_kb']} kB/conn), idle server CPU {idle_cpu.get('server')}%; "
                f"server cpus {connect['server_cpus_allowed']}, clients {connect['clients_cpus_allowed']}"
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

    async def fixed_step(self, s: Session, variant: str, n: int) -> dict:
        """One step at the fixed rate every variant sustains: server CPU µs per delivery, steadily."""
        a = self.args
        rate = a.fixed_deliveries / n
        count = max(a.min_events, int(round(rate * a.fixed_seconds)))
        r = await s.step(rate=rate, count=count, mode=a.bros_publish if s.server.kind == "bros" else None)
        self.log_step(variant, f"N={n} fixed", r)
        log(f"  {variant}: fixed rate {rate:g} events/s -> server CPU {r['us_per_delivery']} us per delivery")
        return r

    async def throughput(self, variant: str, n: int, rep: int = 0, ramp: bool = True) -> dict:
        """Connect storm, idle RSS, the fixed-rate step, then (ramp) the rate raised until a step fails."""
        a = self.args
        base = a.start_rate.get(n, max(0.5, 4000 / n))
        async with self.session(variant, n, 1) as s:
            fixed = await self.fixed_step(s, variant, n)
            await asyncio.sleep(a.settle)
            steps, best, fail = [], None, None
            rate = base
            tried = 0
            while ramp and tried < a.max_steps:
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
                "rep": rep,
                "ramp": ramp,
                "pinned": PIN.on,
                "pinning": PIN.describe(),
                "connect": s.connect,
                "fixed": fixed,
                "sustained_per_s": best["delivered_per_s"] if best else 0.0,
                "sustained_rate": best["rate"] if best else None,
                "sustained_step": best,
                "max_per_s": max((r["delivered_per_s"] for r in steps), default=0.0),
                "steps": steps,
            }
            self.record(row)
            if (
                "burst" in a.scenarios
                and n == a.burst_clients
                and variant in a.burst_variants
                and (variant, rep) not in self.burst_done
            ):
                # The burst reuses these connections when they are all still open (saves a connect storm).
                await asyncio.sleep(a.settle)
                prog = await s.all_workers({"cmd": "progress"})
                if sum(p["open"] for p in prog) == n:
                    await self.burst_steps(s, variant, rep)
            return row

    async def burst(self, variant: str, rep: int = 0) -> list[dict]:
        async with self.session(variant, self.args.burst_clients, 1) as s:
            return await self.burst_steps(s, variant, rep)

    async def burst_steps(self, s: Session, variant: str, rep: int = 0) -> list[dict]:
        a = self.args
        rows = []
        modes = a.burst_modes if s.server.kind == "bros" else [None]
        for mode in modes:
            r = await s.step(rate=0, count=a.burst_events, mode=mode, drain_max=90.0, stall=10.0)
            self.log_step(variant, f"burst {mode or ''}", r)
            row = {
                "scenario": "burst",
                "variant": variant,
                "rep": rep,
                "pinned": PIN.on,
                "n": len(s.room_of),
                "mode": mode,
                "connect": s.connect,
                **r,
            }
            self.record(row)
            rows.append(row)
            await asyncio.sleep(a.settle)
        self.burst_done.add((variant, rep))
        return rows

    async def rooms(self, variant: str, rep: int = 0) -> list[dict]:
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
                    "rep": rep,
                    "pinned": PIN.on,
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

    async def slow(self, variant: str, rep: int = 0) -> dict:
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
                "rep": rep,
                "pinned": PIN.on,
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
            f"server core {r['cpu_pct'].get('server_core')}% client core {r['cpu_pct'].get('client_core')}%"
            f"{' (CLIENTS OVER ' + str(CLIENT_CORE_LIMIT) + '%)' if r['cpu_pct'].get('client_core_over') else ''} "
            f"rss {r['server_rss_mb']} MB {r['us_per_delivery']} us/deliv "
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


# -- median, spread and when a ratio is called ------------------------------------------------------------


def spread(values) -> dict | None:
    """Median and min-max of the runs' figures (None values, i.e. not measured, left out)."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": vals[0], "max": vals[-1], "n": len(vals)}


def fmt_spread(sp: dict | None, spec: str = ".1f") -> str:
    if sp is None:
        return "-"
    mid = format(sp["median"], spec)
    return mid if sp["n"] == 1 else f"{mid} [{format(sp['min'], spec)}-{format(sp['max'], spec)}]"


def overlap(a: dict, b: dict) -> bool:
    return a["min"] <= b["max"] and b["min"] <= a["max"]


def ratio_call(a: dict | None, b: dict | None) -> tuple[float | None, str]:
    """Median of a / median of b, and whether the ratio may be called: only when the two spreads
    (min-max over at least 2 runs each) do not overlap; otherwise the difference is within the noise."""
    if a is None or b is None or not b["median"]:
        return None, "-"
    ratio = a["median"] / b["median"]
    if a["n"] < 2 or b["n"] < 2:
        return ratio, "not called (1 run)"
    return ratio, "not called (spreads overlap)" if overlap(a, b) else "called"


def fmt_ratio(a: dict | None, b: dict | None) -> str:
    ratio, verdict = ratio_call(a, b)
    if ratio is None:
        return "-"
    return f"{ratio:.2f}" if verdict == "called" else f"({ratio:.2f}) {verdict}"


def server_cores(row: dict) -> str:
    allowed = (row.get("connect") or {}).get("server_cpus_allowed")
    if not row.get("pinned") or not allowed:
        return "not pinned"
    procs = 2 if split_variant(row["variant"])[0] in SHARED_CORE else 1
    cores = "/".join(allowed)
    return f"cpu {cores}, 2 procs share it" if procs == 2 else f"cpu {cores} alone"


def kept_up(step: dict) -> bool:
    """A fixed-rate step the server kept up with: everything delivered once, the publisher on rate,
    nobody closed. (Latency is shown beside it, not part of this: the fixed rate measures cost.)"""
    return bool(
        step["received"]
        and step["lost"] == 0
        and step["extra"] == 0
        and step["seq_dups"] == 0
        and step["open"] == step["clients"]
        and (step["pub_rate"] or 0) >= 0.95 * step["rate"]
    )


def variant_figures(runs: list[dict]) -> dict:
    """A variant's figures over its runs (see the summary table).

    The connect storm, RSS and idle figures count only runs where every client connected: a storm
    that ended in refusals is not a storm time. Failed runs are counted and shown instead.
    """
    max_steps = [max(r["steps"], key=lambda x: x["delivered_per_s"]) for r in runs if r["steps"]]
    every_step = [x for r in runs for x in [r["fixed"], *r["steps"]] if x]
    complete = [r for r in runs if r["connect"]["connected"] == r["connect"]["n"]]
    return {
        "connect_s": spread(r["connect"]["wall_s"] for r in complete),
        "connect_p99": spread(r["connect"]["p99_ms"] for r in complete),
        "connect_failed": len(runs) - len(complete),
        "rss_kb": spread(r["connect"].get("rss_per_conn_kb") for r in complete),
        "idle_cpu": spread((r["connect"].get("idle_cpu_pct") or {}).get("server") for r in complete),
        "us": spread(r["fixed"]["us_per_delivery"] for r in runs if r.get("fixed")),
        "fixed_failed": sum(1 for r in runs if r.get("fixed") and not kept_up(r["fixed"])),
        "fixed_p99": spread(r["fixed"]["last_client_p99_ms"] for r in runs if r.get("fixed")),
        "sustained": spread(r["sustained_per_s"] for r in runs) if any(r["steps"] for r in runs) else None,
        "max": spread(x["delivered_per_s"] for x in max_steps),
        "core_at_max": spread(
            (x["cpu_pct"].get("server_core") or x["cpu_pct"]["server"]) for x in max_steps if x.get("cpu_pct")
        ),
        "client_core": max((x["cpu_pct"].get("client_core") or 0 for x in every_step), default=None),
        "client_over": sum(1 for x in every_step if x["cpu_pct"].get("client_core_over")),
        "steps": len(every_step),
        "other": spread(x["cpu_pct"].get("other") for x in every_step),
    }


def summary_rows(sel: list[dict]) -> list[list]:
    """One line per variant over its runs: median [min-max] of every figure, ratios vs socket.io."""
    by_variant: dict[str, list[dict]] = {}
    for r in sel:
        by_variant.setdefault(r["variant"], []).append(r)

    stats = {v: variant_figures(runs) for v, runs in by_variant.items()}
    sio = stats.get("socketio")
    body = []
    for v, f in stats.items():

        def vs_sio(key: str, f=f, v=v) -> str:
            if v == "socketio":
                return "1 (reference)"
            return fmt_ratio(f[key], sio[key]) if sio else "-"

        first = by_variant[v][0]
        clients = (
            "-"
            if f["client_core"] is None
            else f"max {f['client_core']:.0f}%: "
            + (f"OVER {CLIENT_CORE_LIMIT:.0f}% in {f['client_over']}/{f['steps']} steps" if f["client_over"] else "ok")
        )
        body.append(
            [
                variant_label(v, first.get("pinned", False)),
                server_cores(first),
                len(by_variant[v]),
                fmt_spread(f["connect_s"], ".2f")
                + (
                    f" (clients missing in {f['connect_failed']}/{len(by_variant[v])} runs)"
                    if f["connect_failed"]
                    else ""
                ),
                fmt_spread(f["connect_p99"], ".0f"),
                fmt_spread(f["rss_kb"], ".1f"),
                fmt_spread(f["idle_cpu"], ".1f"),
                fmt_spread(f["us"], ".1f")
                + (f" (NOT kept up in {f['fixed_failed']}/{len(by_variant[v])} runs)" if f["fixed_failed"] else ""),
                vs_sio("us"),
                fmt_spread(f["fixed_p99"], ".0f"),
                fmt_spread(f["sustained"], ".0f"),
                vs_sio("sustained"),
                fmt_spread(f["max"], ".0f"),
                vs_sio("max"),
                fmt_spread(f["core_at_max"], ".0f"),
                clients,
                fmt_spread(f["other"], ".0f"),
            ]
        )
    return body


def before_after_rows(sel: list[dict]) -> list[list]:
    """`bros-uvicorn` now vs each `bros-uvicorn@REF` of the same interleaved run: now / before."""
    now = [r for r in sel if r["variant"] == "bros-uvicorn"]
    refs = sorted({r["variant"] for r in sel if split_variant(r["variant"])[1]})
    if not now or not refs:
        return []
    cur = variant_figures(now)
    body = []
    for v in refs:
        before = variant_figures([r for r in sel if r["variant"] == v])
        body.append(
            [
                split_variant(v)[1],
                *(fmt_ratio(cur[key], before[key]) for key in ("us", "sustained", "max", "connect_s", "rss_kb")),
            ]
        )
    return body


BEFORE_AFTER_HEADERS = [
    "ref (before)",
    "us/deliv now / before",
    "sustained now / before",
    "max now / before",
    "connect storm now / before",
    "RSS per conn now / before",
]

SUMMARY_HEADERS = [
    "variant",
    "server cores",
    "runs",
    "connect storm s",
    "connect p99 ms",
    "RSS kB / idle conn",
    "idle srv CPU %",
    "fixed-rate srv CPU us/deliv",
    "us/deliv x sio",
    "fixed-rate last-client p99 ms",
    "sustained deliv/s",
    "sustained x sio",
    "max deliv/s",
    "max x sio",
    "srv core % at max",
    "client core (all steps)",
    "other load %",
]


def report(rows: list[dict]) -> str:
    parts = []
    tp = [r for r in rows if r["scenario"] == "throughput"]
    for n in sorted({r["n"] for r in tp}):
        sel = [r for r in tp if r["n"] == n and r.get("fixed") is not None]
        if not sel:
            continue
        fixed = sel[0]["fixed"]
        parts.append(
            f"### summary, N = {n}: median [min-max] over runs\n\n"
            f"Fixed rate: {fixed['rate']:g} events/s to {n} clients ({fixed['rate'] * n:g} deliveries/s). "
            f"Pinning: {sel[0].get('pinning', 'not recorded')}. A ratio (variant / socket.io) is called only "
            f"when the two spreads do not overlap.\n\n" + table(SUMMARY_HEADERS, summary_rows(sel))
        )
        before_after = before_after_rows(sel)
        if before_after:
            parts.append(
                f"### before vs after, N = {n}: this tree's bros-uvicorn / the ref's (medians; called as above)\n\n"
                + table(BEFORE_AFTER_HEADERS, before_after)
            )
    for n in sorted({r["n"] for r in tp}):
        sel = [r for r in tp if r["n"] == n and r["steps"]]
        if not sel:
            continue
        sio_of_run = {r.get("rep", 0): r for r in sel if r["variant"] == "socketio"}
        body = []
        for r in sel:
            sio = sio_of_run.get(r.get("rep", 0))  # ratios within one run of the interleaved order
            sio_us = median([us_per_delivery(x) for x in sio["steps"]]) if sio else None
            b = r["sustained_step"] or {}
            ratio = (r["sustained_per_s"] / sio["sustained_per_s"]) if sio and sio["sustained_per_s"] else None
            ratio_max = (r["max_per_s"] / sio["max_per_s"]) if sio and sio["max_per_s"] else None
            us = median([us_per_delivery(x) for x in r["steps"]])
            other = median([(x.get("cpu_pct") or {}).get("other") for x in r["steps"]])
            body.append(
                [
                    variant_label(r["variant"], r.get("pinned", False)),
                    r.get("rep", 0) + 1,
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
            f"### throughput ramp, N = {n}, one stream, each run\n\n"
            + table(
                [
                    "variant",
                    "run",
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
                variant_label(r["variant"], r.get("pinned", False)),
                r.get("rep", 0) + 1,
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
                r["cpu_pct"].get("client_core"),
                "yes" if r["lost"] == 0 and r["extra"] == 0 else "NO",
            ]
            for r in sel
        ]
        parts.append(
            f"### {scen}\n\n"
            + table(
                [
                    "variant",
                    "run",
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
                    "client core %",
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
                    variant_label(r["variant"], r.get("pinned", False)),
                    r.get("rep", 0) + 1,
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
                    "run",
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
                variant_label(v),
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


def add_bros_env_argument(p: argparse.ArgumentParser) -> None:
    """`--bros-env NAME=VALUE` (repeatable): extra environment for the BROS servers (also bench/shift.py)."""
    p.add_argument(
        "--bros-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the BROS servers (e.g. REALTIME_HEADS_INTERVAL=3600); repeatable",
    )


def parse_bros_env(p: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    for item in items:
        if "=" not in item:
            p.error(f"--bros-env {item!r}: expected NAME=VALUE")
    return dict(item.split("=", 1) for item in items)


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
    add_bros_env_argument(p)
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
    p.add_argument("--db", default="bros_bench", help="PostgreSQL database of the run (created when missing)")
    p.add_argument("--redis-url", default=BASE_ENV["REDIS_URL"], help="Redis of the run (keys under brosbench*)")
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs of every variant, interleaved (A B C A B C ...): 3 (--quick: 1); tables: median [min-max]",
    )
    p.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="servers under test alone on the last core, everything else on the others (needs >= 2 cores and taskset)",
    )
    p.add_argument(
        "--pin-services",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --pin: redis-server :6379 and PostgreSQL on the non-server cores for the run (restored at exit)",
    )
    p.add_argument(
        "--ref",
        action="append",
        default=[],
        metavar="GIT_REF",
        help="also run bros-uvicorn from the tree at GIT_REF as variant bros-uvicorn@GIT_REF (repeatable, comma list)",
    )
    p.add_argument(
        "--fixed-deliveries",
        type=float,
        default=2000,
        help="the fixed-rate step: deliveries/s (events/s = this / N); low enough for every variant on one core",
    )
    p.add_argument(
        "--fixed-seconds",
        type=float,
        default=20,
        help="length of the fixed-rate step: one heartbeat interval (20 s), every variant pings each socket once",
    )
    p.add_argument("--idle-seconds", type=float, default=3, help="idle wait after the connect storm (idle CPU, RSS)")
    p.add_argument("--quick", action="store_true", help="N=1000, one run, short steps: checks the harness")
    p.add_argument("--skip-setup", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--report", metavar="JSONL", help="only print the tables of an earlier results file")
    args = p.parse_args(argv)
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    for scen in args.scenarios:
        if scen not in ("throughput", "fixed", "burst", "rooms", "slow", "connect", "profile"):
            p.error(f"unknown scenario {scen}")
    args.variants = [v for v in args.variants.split(",") if v]
    for v in args.variants:
        if v not in VARIANTS + OPTIONAL_VARIANTS:
            p.error(f"unknown variant {v}")
    args.refs = [r for item in args.ref for r in item.split(",") if r]
    for ref in args.refs:
        if "@" in ref or "," in ref:
            p.error(f"--ref {ref}: a git ref without '@'")
    args.variants = with_refs(args.variants, args.refs, always=True)
    args.sizes = [int(x) for x in args.sizes.split(",") if x]
    for name in ("burst_variants", "rooms_variants", "slow_variants"):
        chosen = with_refs([v for v in getattr(args, name).split(",") if v], args.refs)
        setattr(args, name, [v for v in args.variants if v in chosen or getattr(args, name) == "all"])
    args.start_rate = {int(k): float(v) for k, v in (x.split(":") for x in args.start_rate.split(",") if x)}
    args.burst_modes = [m for m in args.burst_modes.split(",") if m]
    args.bros_env = parse_bros_env(p, args.bros_env)
    if args.quick:
        args.sizes = [1000] if args.sizes == [1000, 5000] else args.sizes
        args.repeat = 1 if args.repeat is None else args.repeat
        args.burst_clients, args.rooms, args.room_size, args.rooms_rate, args.rooms_seconds = 100, 20, 5, 100, 5
        args.slow_clients, args.slow_seconds, args.slow_baseline_seconds = 100, 8, 3
        args.max_steps, args.step_seconds, args.fixed_seconds, args.idle_seconds = 3, 2, 4, 1
        args.min_events = 4
        args.connect_n = min(args.connect_n, 300)
    args.repeat = 3 if args.repeat is None else args.repeat
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if not re.fullmatch(r"[A-Za-z0-9_]+", args.db):
        p.error("--db: letters, digits and _ only")
    BASE_ENV["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{args.db}"
    BASE_ENV["REDIS_URL"] = args.redis_url
    return args


def with_refs(variants: list[str], refs: list[str], always: bool = False) -> list[str]:
    """The list with `bros-uvicorn@REF` right after `bros-uvicorn` (or at the end when `always`)."""
    extra = [f"bros-uvicorn@{ref}" for ref in refs]
    if "bros-uvicorn" in variants:
        i = variants.index("bros-uvicorn") + 1
        return variants[:i] + [v for v in extra if v not in variants] + variants[i:]
    return variants + [v for v in extra if v not in variants] if always else variants


async def main_async(args, refs: dict) -> int:
    runner = Runner(args)
    facts = machine_facts()
    runner.record(
        {
            "scenario": "meta",
            "argv": sys.argv[1:],
            "facts": facts,
            "bros_env": args.bros_env,
            "pinning": PIN.describe(),
            "refs": {ref: commit for ref, (commit, _) in refs.items()},
            "fixed_deliveries": args.fixed_deliveries,
            "repeat": args.repeat,
        }
    )
    log(f"machine: {facts}")
    log(f"results: {runner.out_path}; server logs: {runner.logdir}")
    started = time.monotonic()
    runner.refs = refs
    log(f"pinning: {PIN.describe()}")
    for n in args.sizes:
        log(f"fixed rate at N={n}: {args.fixed_deliveries / n:g} events/s = {args.fixed_deliveries:g} deliveries/s")
    try:
        # Interleaved: every variant once, then every variant again (A B C A B C ...), so slow drifts
        # of the shared machine spread over all variants instead of favouring one.
        if "throughput" in args.scenarios or "fixed" in args.scenarios:
            ramp = "throughput" in args.scenarios
            for n in args.sizes:
                for rep in range(args.repeat):
                    for v in args.variants:
                        log(f"{'throughput' if ramp else 'fixed'} N={n} run {rep + 1}/{args.repeat}: {v}")
                        await run_guarded(runner, "throughput", v, runner.throughput(v, n, rep, ramp))
        for rep in range(args.repeat):
            if "burst" in args.scenarios:
                for v in args.burst_variants:
                    if (v, rep) not in runner.burst_done:
                        log(f"burst run {rep + 1}/{args.repeat}: {v}")
                        await run_guarded(runner, "burst", v, runner.burst(v, rep))
        for rep in range(args.repeat):
            if "rooms" in args.scenarios:
                for v in args.rooms_variants:
                    log(f"rooms run {rep + 1}/{args.repeat}: {v}")
                    await run_guarded(runner, "rooms", v, runner.rooms(v, rep))
        for rep in range(args.repeat):
            if "slow" in args.scenarios:
                for v in args.slow_variants:
                    log(f"slow run {rep + 1}/{args.repeat}: {v}")
                    await run_guarded(runner, "slow", v, runner.slow(v, rep))
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
    refs: dict[str, tuple[str, Path]] = {}
    services = ServicePins()

    def on_term(signum, frame):
        raise KeyboardInterrupt  # unwind: kill the children, restore affinities, remove ref trees

    signal.signal(signal.SIGTERM, on_term)
    try:
        for ref in args.refs:
            commit, root = export_ref(ref)
            refs[ref] = (commit, root)
            log(f"--ref {ref} = {commit[:12]}, exported to {root}; collectstatic there")
            run_checked([PYTHON, "manage.py", "collectstatic", "--noinput"], cwd=root)
        plan = plan_pinning(args.pin)
        PIN.server, PIN.rest = plan.server, plan.rest
        if PIN.on:
            os.sched_setaffinity(0, PIN.rest)  # the harness; its clients and publishers inherit it
            PIN.services = services.pin(PIN.rest) if args.pin_services else "not pinned (--no-pin-services)"
        elif args.pin:
            log(f"not pinning: {len(os.sched_getaffinity(0))} core(s) available or no taskset")
        return asyncio.run(main_async(args, refs))
    except KeyboardInterrupt:
        return 130
    finally:
        Proc.kill_all_sync()
        services.restore()
        for _, root in refs.values():
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
