"""Memory per idle WebSocket connection, and where it goes (issue 13, "Memory").

    .venv/bin/python bench/conn_memory.py                      # 1,000 sockets, RSS and object counts
    .venv/bin/python bench/conn_memory.py --tracemalloc 10     # + what is held per socket, by line (slower)
    .venv/bin/python bench/conn_memory.py -n 2000 --top 30 --json var/conn-memory.json

A child process runs the real application under uvicorn with production's protocol class
(`--ws realtime.uvicorn_protocol:WebSocketProtocol`, lifespan on), like `bench/fanout.py`. This
process opens one warm-up socket (the hub, the stream's feed and every lazy import exist before the
first snapshot), then N logged-in sockets of one user, each subscribed to `--stream`, and asks the
server (SIGUSR1) for a snapshot before and after: RSS, asyncio tasks, gc-tracked objects by type,
and with --tracemalloc the traced allocations. Printed: RSS delta per socket, tasks and objects per
socket, and the top allocation sites by bytes held per socket. Object counts and traced bytes do not
depend on the machine's load; RSS does a little (allocator arenas).

Needs PostgreSQL and Redis (`DATABASE_URL`, default the fan-out bench's `bros_bench` database,
migrated and seeded here unless --skip-setup; `REDIS_URL`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
HOST = "127.0.0.1"
PRODUCTION_WS = "realtime.uvicorn_protocol:WebSocketProtocol"
ENV = {
    "SECRET_KEY": "bench-not-secret",
    "DATABASE_URL": os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bros_bench"),
    "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    "REDIS_PREFIX": "brosbench-memory",
    "ALLOWED_HOSTS": "127.0.0.1,localhost",
    "DEBUG": "0",
    "SECURE_COOKIES": "0",
    "LOG_LEVEL": "WARNING",
    "PYTHONUNBUFFERED": "1",
    # The clients here never answer `ping`: under tracemalloc a storm outlasts the idle timeout.
    "REALTIME_IDLE_TIMEOUT": "3600",
}


# -- the server child ----------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _snapshot(out_dir: Path, label: str) -> None:
    """Write `label`.json (RSS, tasks, objects by type) and, when tracing, `label`.trace."""
    import tracemalloc

    gc.collect()
    by_type = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    facts = {
        "rss": rss_bytes(),
        "tasks": len(asyncio.all_tasks()),
        "task_coros": collections.Counter(
            getattr(t.get_coro(), "__qualname__", type(t.get_coro()).__name__) for t in asyncio.all_tasks()
        ),
        "objects": dict(by_type),
    }
    if tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(str(out_dir / f"{label}.trace"))
    tmp = out_dir / f"{label}.json.tmp"
    tmp.write_text(json.dumps(facts))
    tmp.rename(out_dir / f"{label}.json")


def serve(port: int, out_dir: Path, frames: int) -> None:
    if frames:
        import tracemalloc

        tracemalloc.start(frames)
    sys.path.insert(0, str(REPO))
    import uvicorn

    config = uvicorn.Config(
        "bros.asgi:application",
        host=HOST,
        port=port,
        ws=PRODUCTION_WS,
        lifespan="on",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    labels = iter(["before", "after", "extra1", "extra2"])

    async def main():
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, lambda: _snapshot(out_dir, next(labels)))
        await server.serve()

    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the SIGINT that stops it
        asyncio.run(main())


# -- the driver ------------------------------------------------------------------------------------------


def manage(*argv: str) -> str:
    out = subprocess.run(
        [PYTHON, "manage.py", *argv],
        cwd=str(REPO),
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(argv)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def setup(db_url: str) -> None:
    import psycopg
    from psycopg import sql

    name = db_url.rsplit("/", 1)[1]
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        if not conn.execute("select 1 from pg_database where datname = %s", [name]).fetchone():
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    manage("migrate", "--noinput")
    manage("seed_demo", "--force")


def session_for(username: str) -> str:
    """A logged-in session's key for `username`, made as `django.contrib.auth.login` makes it."""
    code = (
        "from django.contrib.auth import get_user_model, SESSION_KEY, BACKEND_SESSION_KEY, HASH_SESSION_KEY\n"
        "from django.contrib.sessions.backends.db import SessionStore\n"
        f"u = get_user_model().objects.get(username={username!r})\n"
        "s = SessionStore()\n"
        "s[SESSION_KEY] = str(u.pk)\n"
        "s[BACKEND_SESSION_KEY] = 'django.contrib.auth.backends.ModelBackend'\n"
        "s[HASH_SESSION_KEY] = u.get_session_auth_hash()\n"
        "s.create()\n"
        "print(s.session_key)\n"
    )
    return manage("shell", "-c", code).strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


async def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(HOST, port)
            writer.close()
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("the server did not listen")


async def ask_snapshot(proc: subprocess.Popen, out_dir: Path, label: str, timeout: float = 300.0) -> dict:
    proc.send_signal(signal.SIGUSR1)
    path = out_dir / f"{label}.json"
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {label} snapshot")
        await asyncio.sleep(0.2)
    return json.loads(path.read_text())


async def open_client(port: int, cookie: str, stream: str):
    from websockets.asyncio.client import connect

    ws = await connect(
        f"ws://{HOST}:{port}/ws/v1/",
        additional_headers={"Origin": f"http://{HOST}:{port}", "Cookie": f"sessionid={cookie}"},
        compression=None,
        open_timeout=60,
        ping_interval=None,
    )
    await ws.send(json.dumps({"type": "subscribe", "id": "s", "stream": stream}))
    while True:
        reply = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if reply["type"] == "subscribed":
            return ws
        if reply["type"] == "error":
            raise RuntimeError(reply)


def top_sites(out_dir: Path, n: int, top: int, key: str) -> list[dict]:
    import tracemalloc

    before = tracemalloc.Snapshot.load(str(out_dir / "before.trace"))
    after = tracemalloc.Snapshot.load(str(out_dir / "after.trace"))
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    stats = after.filter_traces(filters).compare_to(before.filter_traces(filters), key)
    rows = []
    for stat in sorted(stats, key=lambda s: -s.size_diff)[:top]:
        frames = stat.traceback if key == "traceback" else stat.traceback[:1]
        rows.append(
            {
                "bytes_per_conn": round(stat.size_diff / n, 1),
                "blocks_per_conn": round(stat.count_diff / n, 2),
                "where": [f"{_short(f.filename)}:{f.lineno}" for f in frames],
            }
        )
    total = sum(s.size_diff for s in stats)
    rows.insert(0, {"bytes_per_conn": round(total / n, 1), "where": ["TOTAL traced"]})
    return rows


def _short(filename: str) -> str:
    for marker in ("site-packages/", str(REPO) + "/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


async def drive(args) -> dict:
    env = {**os.environ, **ENV}
    cookie = session_for(args.user)
    port = free_port()
    out_dir = Path(tempfile.mkdtemp(prefix="conn-memory-"))
    argv = [PYTHON, str(Path(__file__).resolve()), "--serve", str(port), "--out", str(out_dir)]
    argv += ["--tracemalloc", str(args.tracemalloc)]
    proc = subprocess.Popen(argv, cwd=str(REPO), env=env)
    clients = []
    try:
        await wait_port(port, proc)
        clients.append(await open_client(port, cookie, args.stream))  # warm-up: hub, feed, imports
        await asyncio.sleep(1.0)
        before = await ask_snapshot(proc, out_dir, "before")
        sem = asyncio.Semaphore(args.concurrency)

        async def one():
            async with sem:
                clients.append(await open_client(port, cookie, args.stream))

        await asyncio.gather(*(one() for _ in range(args.n)))
        await asyncio.sleep(args.idle)
        after = await ask_snapshot(proc, out_dir, "after")
        n = args.n
        objects = {
            k: round((after["objects"].get(k, 0) - before["objects"].get(k, 0)) / n, 2)
            for k in set(after["objects"]) | set(before["objects"])
        }
        objects = dict(sorted(((k, v) for k, v in objects.items() if abs(v) >= 0.05), key=lambda kv: -kv[1]))
        result = {
            "n": n,
            "stream": args.stream,
            "tracemalloc_frames": args.tracemalloc,
            "rss_before_mb": round(before["rss"] / 2**20, 1),
            "rss_after_mb": round(after["rss"] / 2**20, 1),
            "rss_per_conn_kb": round((after["rss"] - before["rss"]) / n / 1024, 2),
            "tasks_per_conn": round((after["tasks"] - before["tasks"]) / n, 2),
            "task_coros_after": after["task_coros"],
            "gc_objects_per_conn": round(sum(objects.values()), 2),
            "objects_per_conn": objects,
        }
        if args.tracemalloc:
            result["top_lines"] = top_sites(out_dir, n, args.top, "lineno")
            result["top_tracebacks"] = top_sites(out_dir, n, min(args.top, 12), "traceback")
        return result
    finally:
        for ws in clients:
            with contextlib.suppress(Exception):
                ws.transport.abort()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def report(r: dict) -> None:
    traced = r["tracemalloc_frames"]
    print(
        f"N={r['n']} sockets on {r['stream']}: RSS {r['rss_before_mb']} -> {r['rss_after_mb']} MB, "
        f"{r['rss_per_conn_kb']} kB per socket"
        + (f" (tracemalloc on, {traced} frames: RSS includes its overhead)" if traced else "")
    )
    print(f"asyncio tasks per socket: {r['tasks_per_conn']}; gc-tracked objects per socket: {r['gc_objects_per_conn']}")
    print("objects per socket by type:", ", ".join(f"{k} {v}" for k, v in list(r["objects_per_conn"].items())[:25]))
    for title in ("top_lines", "top_tracebacks"):
        if title not in r:
            continue
        print(f"\n{title} (bytes per socket held after - before):")
        for row in r[title]:
            where = row["where"]
            print(f"  {row['bytes_per_conn']:>9.1f} B  {row.get('blocks_per_conn', '')!s:>6}  {where[0]}")
            for frame in where[1:]:
                print(f"  {'':>9}    {'':>6}    {frame}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=1000, help="idle sockets (default 1,000)")
    p.add_argument("--stream", default="broadcast:all")
    p.add_argument("--user", default="hq")
    p.add_argument("--concurrency", type=int, default=50, help="handshakes in flight at once")
    p.add_argument("--idle", type=float, default=2.0, help="seconds idle before the snapshot")
    p.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES", help="trace allocations, FRAMES deep")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--skip-setup", action="store_true")
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the server child
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.serve:
        serve(args.serve, Path(args.out), args.tracemalloc)
        return
    if not args.skip_setup:
        setup(ENV["DATABASE_URL"])
    result = asyncio.run(drive(args))
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
