"""Connect-storm micro-benchmark, in-process: N logged-in sockets connect and subscribe (issue 13).

    .venv/bin/python bench/connect.py                          # this tree, 1,000 sockets, 3 rounds
    .venv/bin/python bench/connect.py --ab /tmp/bros-main      # same-run A/B against another checkout
    .venv/bin/python bench/connect.py --profile var/connect.prof   # cProfile of one storm

Each round runs in a fresh child process: Django set up from the tree, the real ASGI application
(`bros.asgi.application`, origin check, authentication, consumer, this loop's hub) driven by
Channels' in-memory communicator, so the figures are the server's connect path without the network
and HTTP parsing (`bench/fanout.py --scenarios connect` measures through uvicorn, against
socket.io). N sockets of one user (`--user`, default a dispatcher; with `--sessions K` they cycle through K
distinct session rows, as a real storm of many tabs has) open at most `--concurrency` at a
time, each sends `subscribe` for `--stream` and waits for `subscribed`. Printed per round: the
storm's wall time, the process's CPU time per socket (all threads: less load-sensitive than the
wall time), p50/p99 per socket, and the database queries and sync→async thread hops per
socket, counted in every thread (`realtime/tests/cost.py`). With `--ab`, rounds alternate between
the two trees (A B A B …) and the ratio of the median storm times is printed: on a shared, loaded
machine only such same-run ratios and the counts mean anything.

Needs PostgreSQL and Redis (`DATABASE_URL`, default the fan-out bench's `bros_bench` database,
migrated and seeded here unless --skip-setup; `REDIS_URL`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
ENV = {
    "SECRET_KEY": "bench-not-secret",
    "DATABASE_URL": os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bros_bench"),
    "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    "REDIS_PREFIX": "brosbench-connect",
    "ALLOWED_HOSTS": "127.0.0.1,localhost",
    "DEBUG": "0",
    "LOG_LEVEL": "WARNING",
    "MAP_TILE_URL": "",
}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


# -- child: one storm in one tree ------------------------------------------------------------------


async def storm(args, application, cookies: list[str], cost_module) -> dict:
    from channels.testing import WebsocketCommunicator

    from realtime.hub import stop_hub

    base = [(b"host", b"localhost"), (b"origin", b"http://localhost")]
    headers_of = [[*base, (b"cookie", cookie.encode())] for cookie in cookies]
    headers = headers_of[0]
    subscribe = {"type": "subscribe", "id": "s", "stream": args.stream}
    sem = asyncio.Semaphore(args.concurrency)
    times: list[float] = []
    errors: dict[str, int] = {}
    open_ones = []

    # Warm-up: one socket primes the hub and the stream's feed (a running server has them already).
    warm = WebsocketCommunicator(application, "/ws/v1/", headers=headers)
    assert (await warm.connect(timeout=30))[0], "the warm-up handshake was refused: is the demo data loaded?"
    await warm.send_json_to(subscribe)
    assert (await warm.receive_json_from(timeout=30))["type"] == "subscribed"

    with cost_module.counting() as spent:
        app = spent.app(application)

        async def one(i):
            async with sem:
                t0 = time.perf_counter()
                communicator = WebsocketCommunicator(app, "/ws/v1/", headers=headers_of[i % len(headers_of)])
                try:
                    accepted, _ = await communicator.connect(timeout=args.timeout)
                    if not accepted:
                        raise RuntimeError("refused")
                    await communicator.send_json_to(subscribe)
                    reply = {"type": "ping"}
                    while reply["type"] == "ping":  # a heartbeat may come first in a long storm
                        reply = await communicator.receive_json_from(timeout=args.timeout)
                    if reply["type"] != "subscribed":
                        raise RuntimeError(reply.get("code", reply["type"]))
                except Exception as exc:  # counted, not fatal: the storm goes on
                    key = f"{type(exc).__name__}: {exc}"[:120]
                    errors[key] = errors.get(key, 0) + 1
                    return
                times.append(time.perf_counter() - t0)
                open_ones.append(communicator)

        t0, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one(i) for i in range(args.n)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        hops = list(spent.hops)
        queries = len(spent.queries)
    for communicator in [*open_ones, warm]:
        with contextlib.suppress(Exception):
            await communicator.disconnect(timeout=10)
    await stop_hub()
    by_name: dict[str, int] = {}
    for name in hops:
        by_name[name] = by_name.get(name, 0) + 1
    connected = len(times)
    return {
        "n": args.n,
        "connected": connected,
        "failed": args.n - connected,
        "errors": errors,
        "wall_s": round(wall, 3),
        "cpu_ms_per_socket": round(1000 * cpu / args.n, 3),
        "p50_ms": round(1000 * percentile(times, 50), 1) if times else None,
        "p99_ms": round(1000 * percentile(times, 99), 1) if times else None,
        "queries_per_socket": round(queries / args.n, 2),
        "hops_per_socket": round(len(hops) / args.n, 2),
        "hops": by_name,
    }


def child(args) -> None:
    tree = Path(args.tree).resolve()
    os.chdir(tree)
    sys.path.insert(0, str(tree))
    os.environ.update(ENV)
    os.environ["DJANGO_SETTINGS_MODULE"] = "bros.settings"
    # The counters come from this bench's own tree: the other checkout may predate them.
    spec = importlib.util.spec_from_file_location("bros_bench_cost", REPO / "realtime" / "tests" / "cost.py")
    import django

    django.setup()
    cost_module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = cost_module  # dataclasses look their module up
    spec.loader.exec_module(cost_module)
    sessions = importlib.util.spec_from_file_location("bros_bench_sessions", BENCH / "sessions.py")
    sessions_module = importlib.util.module_from_spec(sessions)
    sessions.loader.exec_module(sessions_module)
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    from bros.asgi import application

    user = get_user_model().objects.get(username=args.user)
    if args.sessions:
        keys = sessions_module.login_sessions([user] * args.sessions)
    else:
        client = Client()
        client.force_login(user)
        keys = [client.cookies[settings.SESSION_COOKIE_NAME].value]
    cookies = [f"{settings.SESSION_COOKIE_NAME}={key}" for key in keys]
    from django.db import connections

    connections.close_all()
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        result = profiler.runcall(asyncio.run, storm(args, application, cookies, cost_module))
        profiler.dump_stats(args.profile)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(45)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(30)
    else:
        result = asyncio.run(storm(args, application, cookies, cost_module))
    print(json.dumps(result), flush=True)


# -- parent: rounds, A/B, table --------------------------------------------------------------------


def run_round(args, tree: Path) -> dict:
    argv = [
        PYTHON,
        str(Path(__file__).resolve()),
        "--child",
        "--tree",
        str(tree),
        *("-n", str(args.n), "--concurrency", str(args.concurrency), "--user", args.user, "--stream", args.stream),
        *("--timeout", str(args.timeout), "--sessions", str(args.sessions)),
    ]
    if args.profile:
        argv += ["--profile", args.profile]
    out = subprocess.run(argv, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"round in {tree} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    if args.profile:
        sys.stderr.write(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def setup() -> None:
    import psycopg

    base = ENV["DATABASE_URL"].rsplit("/", 1)
    with psycopg.connect(f"{base[0]}/postgres", autocommit=True) as conn:
        if not conn.execute("select 1 from pg_database where datname = %s", [base[1]]).fetchone():
            conn.execute(f'create database "{base[1]}"')
    env = {**os.environ, **ENV}
    for argv in (["manage.py", "migrate", "--noinput"], ["manage.py", "seed_demo", "--force"]):
        subprocess.run([PYTHON, *argv], cwd=str(REPO), env=env, check=True, capture_output=True, timeout=600)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=1000, help="sockets per storm")
    p.add_argument("--concurrency", type=int, default=500, help="handshakes in flight at once")
    p.add_argument("--user", default="dispatch-gangnam")
    p.add_argument("--stream", default="deliveries:gangnam")
    p.add_argument(
        "--sessions", type=int, default=0, help="distinct session rows the sockets cycle through (0: one login)"
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--timeout", type=float, default=120.0, help="per socket, seconds")
    p.add_argument("--ab", metavar="TREE", help="another checkout to compare with, round by round")
    p.add_argument("--profile", metavar="FILE", help="cProfile one storm (this tree) into FILE and print the top")
    p.add_argument("--skip-setup", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tree", default=str(REPO), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if not args.skip_setup:
        setup()
    trees = {"this": REPO} if not args.ab else {"this": REPO, "other": Path(args.ab).resolve()}
    if args.profile:
        args.rounds, trees = 1, {"this": REPO}
    rows: dict[str, list[dict]] = {name: [] for name in trees}
    for r in range(args.rounds):
        for name, tree in trees.items() if r % 2 == 0 else reversed(trees.items()):
            row = run_round(args, tree)
            rows[name].append(row)
            print(
                f"round {r + 1} {name:5}: {row['connected']}/{row['n']} in {row['wall_s']} s, "
                f"{row.get('cpu_ms_per_socket')} ms CPU per socket, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
                f"failed {row['failed']} {row['errors'] or ''}, "
                f"{row['queries_per_socket']} queries and {row['hops_per_socket']} hops per socket {row['hops']}",
                flush=True,
            )
    medians = {name: statistics.median(r["wall_s"] for r in got) for name, got in rows.items()}
    for name, median in medians.items():
        cpu = statistics.median(r["cpu_ms_per_socket"] for r in rows[name])
        print(
            f"{name}: median storm {median:.2f} s, {cpu:.3f} ms CPU per socket (process, all threads), "
            f"{len(rows[name])} rounds ({trees[name]})"
        )
    if args.ab:
        print(f"other / this = {medians['other'] / medians['this']:.2f} (same run, shared machine: ratios only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
