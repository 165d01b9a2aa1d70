"""A realistic shift (issue 13): 3 centers, 2,000 dashboards, 1,500 riders, 30 commands/s.

    .venv/bin/python bench/shift.py --servers 1          # one ASGI process
    .venv/bin/python bench/shift.py --servers 3          # three behind HAProxy (deploy/haproxy.cfg)
    .venv/bin/python bench/shift.py --quick              # 200 dashboards, 150 riders, 5 commands/s, 20 s

What runs, all on loopback, all bounded in time (see docs/benchmarks.md, "Shift benchmark"):

- a fresh database (`--db`, dropped and created again), migrated, `seed_demo` (its 3 centers and
  shops), then bench/shift_setup.py: the riders (on duty), one dispatcher account and session per
  dashboard, one session per rider, an API token for the commands;
- the server(s) with production's command line (bench/fanout.py's `uvicorn_argv`); with
  `--servers 3`, HAProxy started on the shipped deploy/haproxy.cfg through its environment
  variables, as tests/scaleout does, and every client (sockets and HTTP) goes through it;
- load-client processes (bench/shiftclient.py on bench/loadclient.py): the dashboards subscribe to
  their center's `deliveries`, `riders` and `positions` streams as the board does; the riders send a
  `position` frame every `--fix-interval` seconds over their own socket (what the rider page does
  while its socket is up; `POST /positions` is only its fallback for buffered fixes);
- this runner sends `--rate` commands per second through the HTTP API with the token, as
  create order → assign → pick up → deliver cycles spread over the centers.

Measured: command-to-screen latency (a `deliveries:*` frame's receipt on a dashboard minus the
frame's own `ts`, written in the command's transaction), position-to-map latency (a fix's receipt
in a `rider.positions` frame on a sampled dashboard minus the `ts` the rider put in the fix), lost
events per dashboard (after the load stops and the dashboards caught up with the database's stream
heads: every seq of `deliveries` and `riders` since it subscribed must have arrived once), SQL
statements per command (bench/shift_setup.py `queries`), PostgreSQL transactions per command over
the run (`pg_stat_database.xact_commit`, everything the servers did, positions included), CPU % and
RSS of every process from /proc. Output: a progress line every `--progress` seconds, a summary
table, JSON lines in bench/results/shift-<time>.jsonl and a PNG chart per run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import random
import resource
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fanout
from bench.fanout import (
    HOST,
    PIN,
    PRODUCTION_WS,
    PYTHON,
    Proc,
    ServicePins,
    _cpu_by_pid,
    hist_percentile,
    log,
    run_checked,
    uvicorn_argv,
    wait_http,
)
from tests.scaleout.haproxy_env import HAPROXY, haproxy_argv, haproxy_env, show_stat

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
MAX_DURATION = 600.0
CORES = psutil.cpu_count() or 1
BASE_PORT = 18600
TARGET_P99_MS = 100.0  # the target for command-to-screen with one process
FULL = {"dashboards": 2000, "riders": 1500, "rate": 30.0, "duration": 60.0}
QUICK = {"dashboards": 200, "riders": 150, "rate": 5.0, "duration": 20.0}


# -- pure helpers (bench/tests/test_shift_stats.py) -------------------------------------------------


def tokens_per_center(rate: float, centers: int = 3, per_token: float = 5.0) -> int:
    """API tokens per center so that none sends more than `per_token` commands/s: half the default
    allowance (`API_COMMAND_RATE`, 10/s per token), so the run measures the servers, not the limit."""
    return max(1, math.ceil(rate / centers / per_token))


def merge_hists(hists) -> dict[int, int]:
    """Sum 1 ms histograms (JSON turns their keys into strings)."""
    out: dict[int, int] = {}
    for hist in hists:
        for k, v in hist.items():
            out[int(k)] = out.get(int(k), 0) + v
    return out


def p_ms(hist: dict[int, int], q: float) -> float | None:
    """The q-th percentile of a 1 ms histogram in ms (the bucket's upper edge), None when empty."""
    value = hist_percentile(hist, q)
    return None if value is None else value * 1000


def cpu_pct(before: dict[int, float], after: dict[int, float], wall: float) -> float:
    """CPU % of one core used by a group of processes between two per-pid samples.

    A pid only in `after` (a PostgreSQL backend that started meanwhile) counts with all its CPU.
    """
    used = sum(t - before.get(pid, 0.0) for pid, t in after.items())
    return 100 * used / wall if wall > 0 else 0.0


def rss_mb(pids: list[int]) -> float:
    """Summed RSS of these processes, without their children (the runner's children are the others).

    PostgreSQL backends' RSS includes the shared buffers each touched, so their sum overstates.
    """
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_info().rss
    return total / 2**20


# -- processes ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def pin_plan(servers: int, enabled: bool) -> str:
    """Server processes on the last `servers` cores, everything else on the others (needs servers + 1 cores)."""
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled or not shutil.which("taskset"):
        return "not pinned"
    if len(cpus) < servers + 1:
        return f"not pinned ({len(cpus)} cores: {servers} server process(es) need {servers + 1})"
    PIN.server, PIN.rest = set(cpus[-servers:]), set(cpus[:-servers])
    return PIN.describe()


class Haproxy:
    """The shipped deploy/haproxy.cfg in front of `ports`, run as the scale-out tests run it."""

    def __init__(self, ports: list[int], logdir: Path, maxconn: int):
        self.port = free_port()
        self.socket_path = Path(tempfile.mkdtemp(prefix="bros-shift-haproxy-")) / "admin.sock"
        env = haproxy_env(self.port, self.socket_path, [f"{HOST}:{port}" for port in ports], maxconn)
        self.proc = Proc("haproxy", haproxy_argv(), env=env, log_path=logdir / "haproxy.log", cpus=PIN.rest)

    def up(self) -> int:
        """How many servers HAProxy has up (by its `/healthz` checks)."""
        return sum(1 for row in show_stat(self.socket_path).values() if row["status"] == "UP")

    async def start(self, servers: int) -> None:
        await self.proc.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError(f"haproxy exited; see {self.proc.log_path}")
            with contextlib.suppress(OSError):
                if self.up() == servers:
                    return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"haproxy did not find {servers} servers up in 30 s; see {self.proc.log_path}")

    async def stop(self) -> None:
        await self.proc.stop()
        shutil.rmtree(self.socket_path.parent, ignore_errors=True)


# -- the run -----------------------------------------------------------------------------------------


class Shift:
    def __init__(self, args, plan: dict, logdir: Path, stamp: str):
        self.args = args
        self.plan = plan
        self.logdir = logdir
        self.stamp = stamp
        self.servers: list[Proc] = []
        self.haproxy: Haproxy | None = None
        self.workers: list[Proc] = []
        self.port = 0
        self.stop_commands = asyncio.Event()
        self.commands = {"sent": 0, "ok": 0, "failed": 0, "by_kind": {}, "errors": {}}
        self.http_ms: dict[int, int] = {}
        self.in_flight: set[asyncio.Task] = set()
        self.timeline: list[dict] = []
        self.background: float | None = None  # machine busy % before the servers started (other work)

    # -- start -------------------------------------------------------------------------------------

    async def start_servers(self) -> None:
        env = {"LOG_LEVEL": "WARNING", **self.args.bros_env}
        for i in range(self.args.servers):
            port = BASE_PORT + i
            argv = [*uvicorn_argv(PRODUCTION_WS, lifespan=True), "--port", str(port), "bros.asgi:application"]
            proc = Proc(f"server-{i + 1}", argv, env=env, log_path=self.logdir / f"server-{i + 1}.log", cpus=PIN.server)
            self.servers.append(await proc.start())
        for i, proc in enumerate(self.servers):
            await wait_http(BASE_PORT + i, "/healthz", proc, want=200)
        if self.args.servers == 1:
            self.port = BASE_PORT
        else:
            total = self.args.dashboards + self.args.riders
            self.haproxy = Haproxy([BASE_PORT + i for i in range(self.args.servers)], self.logdir, 2 * total + 1000)
            await self.haproxy.start(self.args.servers)
            self.port = self.haproxy.port
        log(f"server(s) up; clients connect to :{self.port}" + (" (HAProxy)" if self.haproxy else ""))

    async def start_clients(self) -> None:
        for i in range(self.args.clients):
            argv = [PYTHON, str(BENCH / "shiftclient.py")]
            proc = Proc(f"clients-{i + 1}", argv, log_path=self.logdir / f"clients-{i + 1}.log", pipes=True)
            await proc.start()
            await proc.read(timeout=60)
            self.workers.append(proc)
        dash, riders = [], []
        sample_every = max(1, self.args.sample_every)
        for center in self.plan["centers"]:
            code = center["code"]
            frames = [
                {"type": "subscribe", "id": s, "stream": f"{s}:{code}"} for s in ("deliveries", "riders", "positions")
            ]
            for key in center["dashboards"]:
                sample = len(dash) % sample_every == 0
                dash.append(self.spec(key, {"role": "dashboard", "frames": frames, "sample": sample}))
            for rider in center["riders"]:
                frames_r = [{"type": "subscribe", "id": "u", "stream": f"user:{rider['user']}"}]
                config = {"role": "rider", "frames": frames_r, "center": [center["lat"], center["lng"]]}
                riders.append(self.spec(rider["session"], config))
        random.Random(1).shuffle(dash)  # each client process gets dashboards of every center
        connected = 0
        for what, specs in (("dashboards", dash), ("riders", riders)):
            started = time.monotonic()
            per = [specs[i :: len(self.workers)] for i in range(len(self.workers))]
            answers = await asyncio.gather(
                *(
                    w.request({"cmd": "connect", "specs": s, "concurrency": 50, "timeout": 60}, timeout=900)
                    for w, s in zip(self.workers, per, strict=True)
                )
            )
            failed = sum(a["failed"] for a in answers)
            errors = fanout._merge_counts(a["errors"] for a in answers)
            now_connected = sum(a["connected"] for a in answers)  # a worker's count covers all its clients
            log(f"{what}: {now_connected - connected} connected, {failed} failed in {time.monotonic() - started:.1f}s")
            connected = now_connected
            if failed:
                raise RuntimeError(f"{failed} {what} failed to connect: {errors}")

    def spec(self, session: str, config: dict) -> dict:
        origin = f"http://{HOST}:{self.port}"
        headers = {"Origin": origin, "Cookie": f"sessionid={session}"}
        return {
            "kind": "bros",
            "host": HOST,
            "port": self.port,
            "path": "/ws/v1/",
            "headers": headers,
            "subscribe": json.dumps(config),
        }

    # -- commands ----------------------------------------------------------------------------------

    async def post(self, kind: str, path: str, body: dict, token: str) -> dict | None:
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Idempotency-Key": uuid.uuid4().hex,
        }
        self.commands["sent"] += 1
        started = time.monotonic()
        try:
            status, _, payload = await fanout.http(
                self.port, "POST", path, headers=headers, body=json.dumps(body).encode()
            )
        except (OSError, TimeoutError, IndexError, ValueError) as exc:
            status, payload = None, repr(exc).encode()
        ms = min(60_000, int((time.monotonic() - started) * 1000))
        self.http_ms[ms] = self.http_ms.get(ms, 0) + 1
        if status in (200, 201):
            self.commands["ok"] += 1
            self.commands["by_kind"][kind] = self.commands["by_kind"].get(kind, 0) + 1
            return json.loads(payload)
        self.commands["failed"] += 1
        key = f"{kind} {status}: {payload[:120].decode(errors='replace')}"
        self.commands["errors"][key] = self.commands["errors"].get(key, 0) + 1
        return None

    async def step(self, cycle: dict, ready: list) -> None:
        """The cycle's next command; a cycle that still has steps goes back to `ready`."""
        center = cycle["center"]
        if cycle["next"] == "create":
            body = {
                "shop": random.choice(center["shops"]),
                "customer_name": "Shift Kim",
                "customer_phone": "010-0000-0000",
                "address": "Teheran-ro 1",
                "items": [{"name": "Chicken", "qty": 1}],
            }
            order = await self.post("create", "/api/v1/orders", body, cycle["token"])
            if order is None:
                return
            delivery = order["delivery"]
            cycle["delivery"] = delivery["id"] if isinstance(delivery, dict) else delivery
            cycle["next"] = "assign"
        else:
            kind = cycle["next"]
            body = {"rider": cycle["rider"]} if kind == "assign" else {}
            if await self.post(kind, f"/api/v1/deliveries/{cycle['delivery']}/{kind}", body, cycle["token"]) is None:
                return
            cycle["next"] = {"assign": "pickup", "pickup": "deliver", "deliver": None}[kind]
        if cycle["next"]:
            ready.append(cycle)

    async def run_commands(self) -> None:
        """`--rate` commands per second, open loop: a command is due every 1/rate s whatever the answers."""
        ready: list[dict] = []
        centers = self.plan["centers"]
        n = 0
        interval = 1 / self.args.rate
        start = time.monotonic()
        while not self.stop_commands.is_set():
            delay = start + n * interval - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_commands.wait(), delay)
                if self.stop_commands.is_set():
                    break
            if ready:
                cycle = ready.pop(0)
            else:
                center = centers[n % len(centers)]
                k = n // len(centers)
                rider = center["riders"][k % len(center["riders"])]["id"]
                token = center["tokens"][k % len(center["tokens"])]
                cycle = {"center": center, "rider": rider, "token": token, "next": "create"}
            task = asyncio.create_task(self.step(cycle, ready))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
            n += 1
        if self.in_flight:
            await asyncio.wait(self.in_flight, timeout=30)

    # -- measurement -------------------------------------------------------------------------------

    def groups(self) -> dict[str, list[int]]:
        """Every process of the run by name: each server, HAProxy, Redis, PostgreSQL, each client, the runner."""
        out = {p.name: [p.pid] for p in self.servers if p.alive()}
        if self.haproxy and self.haproxy.proc.alive():
            out["haproxy"] = [self.haproxy.proc.pid]
        services = fanout.service_pids()
        out["redis"] = services["redis"]
        out["postgres"] = services["postgres"]
        for w in self.workers:
            if w.alive():
                out[w.name] = [w.pid]
        out["runner"] = [os.getpid()]
        return out

    def cpu_sample(self) -> dict:
        groups = self.groups()
        return {
            "t": time.monotonic(),
            "cpu": {name: _cpu_by_pid(pids) for name, pids in groups.items()},
            "groups": groups,
        }

    async def progress(self, started: float, last: dict) -> dict:
        answers = await asyncio.gather(*(w.request({"cmd": "sample"}) for w in self.workers))
        now = self.cpu_sample()
        wall = now["t"] - last["t"]
        cpu = {name: round(cpu_pct(last["cpu"].get(name, {}), now["cpu"][name], wall), 1) for name in now["cpu"]}
        rss = {name: round(rss_mb(pids), 1) for name, pids in now["groups"].items()}
        cmd = merge_hists(a["cmd"] for a in answers)
        pos = merge_hists(a["pos"] for a in answers)
        point = {
            "t": round(time.monotonic() - started, 1),
            "cmd_p50": p_ms(cmd, 50),
            "cmd_p99": p_ms(cmd, 99),
            "cmd_n": sum(cmd.values()),
            "pos_p50": p_ms(pos, 50),
            "pos_p99": p_ms(pos, 99),
            "pos_n": sum(pos.values()),
            "commands_ok": self.commands["ok"],
            "commands_failed": self.commands["failed"],
            "fixes_sent": sum(a["fixes_sent"] for a in answers),
            "dashboards_open": sum(a["dashboards_open"] for a in answers),
            "riders_open": sum(a["riders_open"] for a in answers),
            "gaps": sum(a["gaps"] for a in answers),
            "cpu": cpu,
            "rss_mb": rss,
            "machine_pct": round(sum(psutil.cpu_percent(percpu=True)), 1),
        }
        self.timeline.append(point)
        servers = sum(v for k, v in cpu.items() if k.startswith("server-"))
        log(
            f"t={point['t']:>5.0f}s cmds ok {point['commands_ok']} failed {point['commands_failed']} | "
            f"cmd→screen p50 {fmt(point['cmd_p50'])} p99 {fmt(point['cmd_p99'])} ms | "
            f"fix→map p50 {fmt(point['pos_p50'])} p99 {fmt(point['pos_p99'])} ms | gaps {point['gaps']} | "
            f"open {point['dashboards_open']}+{point['riders_open']} | server CPU {servers:.0f}% | "
            f"machine {point['machine_pct']:.0f}%"
        )
        return now

    def heads(self) -> dict[str, int]:
        import psycopg

        with psycopg.connect(self.args.dsn) as conn:
            rows = conn.execute(
                "select name, head from realtime_stream where name like 'deliveries:%' or name like 'riders:%'"
            ).fetchall()
        return dict(rows)

    def xacts(self) -> int:
        import psycopg

        with psycopg.connect(self.args.dsn) as conn:
            row = conn.execute("select xact_commit from pg_stat_database where datname = %s", [self.args.db]).fetchone()
        return int(row[0])

    async def run(self) -> dict:
        # fanout.py's wait for a quiet machine (it reads only --quiet-below / --quiet-wait of self.args)
        self.background = await fanout.Runner.wait_quiet(self)
        await self.start_servers()
        await self.start_clients()
        xact_before = self.xacts()
        await asyncio.gather(
            *(w.request({"cmd": "riders_start", "interval": self.args.fix_interval}) for w in self.workers)
        )
        started = time.monotonic()
        psutil.cpu_percent(percpu=True)  # the machine's busy % of the first progress line starts here
        last = self.cpu_sample()
        first = last
        commands = asyncio.create_task(self.run_commands())
        log(
            f"load on for {self.args.duration:.0f}s: {self.args.rate:g} commands/s, "
            f"{self.args.riders} riders every {self.args.fix_interval:g}s"
        )
        while time.monotonic() - started < self.args.duration:
            await asyncio.sleep(min(self.args.progress, max(0.0, self.args.duration - (time.monotonic() - started))))
            last = await self.progress(started, last)
        # CPU and rates over the load window only, not the wait for the last answers below.
        end = self.cpu_sample()
        elapsed = end["t"] - first["t"]
        self.stop_commands.set()
        riders = await asyncio.gather(*(w.request({"cmd": "riders_stop"}) for w in self.workers))
        fixes_sent = sum(a["fixes_sent"] for a in riders)
        await commands
        xact_after = self.xacts()
        # Lost events: once the dashboards caught up with the heads in the database (bounded wait).
        heads = self.heads()
        deadline = time.monotonic() + 30
        behind = None
        while time.monotonic() < deadline:
            answers = await asyncio.gather(*(w.request({"cmd": "behind", "heads": heads}) for w in self.workers))
            behind = sum(a["behind"] for a in answers)
            if behind == 0:
                break
            await asyncio.sleep(0.5)
        finals = await asyncio.gather(*(w.request({"cmd": "final", "heads": heads}) for w in self.workers))
        cmd = merge_hists(f["cmd_all"] for f in finals)
        pos = merge_hists(f["pos_all"] for f in finals)
        lost = [n for f in finals for n in f["lost"]]
        cpu = {name: round(cpu_pct(first["cpu"].get(name, {}), end["cpu"][name], elapsed), 1) for name in end["cpu"]}
        rss = {name: max((p["rss_mb"].get(name, 0.0) for p in self.timeline), default=0.0) for name in end["cpu"]}
        return {
            "cmd_p50_ms": p_ms(cmd, 50),
            "cmd_p99_ms": p_ms(cmd, 99),
            "cmd_frames": sum(cmd.values()),
            "pos_p50_ms": p_ms(pos, 50),
            "pos_p99_ms": p_ms(pos, 99),
            "pos_fixes_seen": sum(pos.values()),
            "http_p50_ms": p_ms(self.http_ms, 50),
            "http_p99_ms": p_ms(self.http_ms, 99),
            "commands": self.commands,
            # answered ok, over the load window (a command sent in it may be answered after it)
            "commands_per_s": round(self.commands["ok"] / elapsed, 2) if elapsed else None,
            "fixes_per_s": round(fixes_sent / elapsed, 1) if elapsed else None,
            "lost_total": sum(lost),
            "lost_max_per_dashboard": max(lost, default=0),
            "dashboards_with_loss": sum(1 for n in lost if n),
            "behind_at_end": behind,
            "gaps": sum(f["gaps"] for f in finals),
            "dups": sum(f["dups"] for f in finals),
            "closed_sockets": sum(f["closed"] for f in finals),
            "close_codes": fanout._merge_counts(f["close_codes"] for f in finals),
            "heads": heads,
            "xact_per_command": round((xact_after - xact_before) / self.commands["ok"], 1)
            if self.commands["ok"]
            else None,
            "cpu_pct": cpu,
            "rss_mb_max": rss,
            "elapsed_s": round(elapsed, 1),
            # both in % of one core, like the per-process figures (a 2-core machine busy throughout: 200 %)
            "background_busy_pct": round(self.background * CORES, 1) if self.background is not None else None,
            "machine_busy_pct": round(sum(p["machine_pct"] for p in self.timeline) / len(self.timeline), 1)
            if self.timeline
            else None,
            "timeline": self.timeline,
        }

    async def stop(self) -> None:
        for w in self.workers:
            with contextlib.suppress(Exception):
                if w.alive():
                    await w.request({"cmd": "close"}, timeout=10)
            await w.stop()
        if self.haproxy:
            await self.haproxy.stop()
        for p in self.servers:
            await p.stop()


# -- setup, output -----------------------------------------------------------------------------------


def prepare(args, workdir: Path) -> dict:
    """A fresh database: migrate, seed_demo's centers and shops, then the shift's accounts (shift_setup.py)."""
    import psycopg
    from psycopg import sql

    log(
        f"setup: database {args.db} (dropped and created again), migrate, seed_demo, "
        f"{args.riders} riders, {args.dashboards} dashboards"
    )
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(args.db)))
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(args.db)))
    run_checked([PYTHON, "manage.py", "migrate", "--noinput"])
    run_checked([PYTHON, "manage.py", "seed_demo", "--force"])
    fanout.clean_redis()
    out = workdir / "plan.json"
    argv = [PYTHON, str(BENCH / "shift_setup.py"), "data", "--dashboards", str(args.dashboards)]
    argv += ["--riders", str(args.riders), "--tokens-per-center", str(tokens_per_center(args.rate))]
    run_checked([*argv, "--out", str(out)])
    return json.loads(out.read_text())


def count_queries(token: str, workdir: Path) -> dict:
    out = workdir / "queries.json"
    run_checked([PYTHON, str(BENCH / "shift_setup.py"), "queries", "--token", token, "--out", str(out)])
    return json.loads(out.read_text())


def fmt(v, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def summary(row: dict) -> str:
    r = row["result"]
    lines = [
        f"shift: {row['servers']} server process(es){' behind HAProxy' if row['servers'] > 1 else ''}, "
        f"{row['dashboards']} dashboards, {row['riders']} riders (fix every {row['fix_interval']:g}s), "
        f"{row['rate']:g} commands/s for {row['duration']:g}s; {row['pinning']}",
        f"  command→screen   p50 {fmt(r['cmd_p50_ms'])} ms  p99 {fmt(r['cmd_p99_ms'])} ms  "
        f"({r['cmd_frames']} frames; target p99 < {TARGET_P99_MS:.0f} ms with one process)",
        f"  position→map     p50 {fmt(r['pos_p50_ms'])} ms  p99 {fmt(r['pos_p99_ms'])} ms  "
        f"({r['pos_fixes_seen']} fixes on sampled dashboards)",
        f"  HTTP command     p50 {fmt(r['http_p50_ms'])} ms  p99 {fmt(r['http_p99_ms'])} ms  "
        f"({r['commands']['ok']} ok, {r['commands']['failed']} failed, {fmt(r['commands_per_s'], '.1f')}/s)",
        f"  lost events      {r['lost_total']} (max {r['lost_max_per_dashboard']} per dashboard, "
        f"{r['dashboards_with_loss']} dashboards; gaps {r['gaps']}, dups {r['dups']}, "
        f"behind at end {r['behind_at_end']})",
        f"  machine busy     {fmt(r['background_busy_pct'])} % before the servers started (other work), "
        f"{fmt(r['machine_busy_pct'])} % during the load ({CORES} cores = {CORES * 100} %)",
        f"  DB per command   {fmt(row['queries']['per_command'], '.1f')} SQL statements "
        f"({', '.join(f'{k} {v:.0f}' for k, v in row['queries']['per_kind'].items())}); "
        f"{fmt(r['xact_per_command'], '.1f')} PostgreSQL transactions per command over the run (all traffic)",
        f"  {'process':<14} {'CPU %':>7} {'RSS MB':>8}",
    ]
    for name, pct in r["cpu_pct"].items():
        lines.append(f"  {name:<14} {pct:>7.1f} {r['rss_mb_max'].get(name, 0.0):>8.1f}")
    if r["commands"]["errors"]:
        lines.append(f"  command errors: {r['commands']['errors']}")
    return "\n".join(lines)


def chart(row: dict, path: Path) -> None:
    """Latency over time (p50/p99 per progress interval) and CPU % per process."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = row["result"]["timeline"]
    t = [p["t"] for p in points]
    fig, (lat, cpu) = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    for key, label, style in (
        ("cmd_p50", "command→screen p50", "-"),
        ("cmd_p99", "command→screen p99", "--"),
        ("pos_p50", "position→map p50", "-"),
        ("pos_p99", "position→map p99", "--"),
    ):
        lat.plot(t, [p[key] if p[key] is not None else float("nan") for p in points], style, label=label, marker="o")
    lat.axhline(TARGET_P99_MS, color="grey", linewidth=0.8, linestyle=":", label="100 ms target")
    lat.set_ylabel("latency (ms)")
    lat.set_yscale("log")
    lat.legend(fontsize=8)
    lat.set_title(
        f"BROS shift: {row['servers']} server process(es), {row['dashboards']} dashboards, {row['riders']} riders, "
        f"{row['rate']:g} cmd/s ({row['stamp']})",
        fontsize=9,
    )
    names = list(points[-1]["cpu"]) if points else []
    for name in names:
        cpu.plot(t, [p["cpu"].get(name, 0.0) for p in points], label=name, marker=".")
    cpu.set_ylabel("CPU (% of one core)")
    cpu.set_xlabel("seconds into the load")
    cpu.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", type=int, choices=[1, 3], default=1, help="ASGI processes (3: behind HAProxy)")
    p.add_argument("--quick", action="store_true", help="200 dashboards, 150 riders, 5 commands/s, 20 s")
    p.add_argument("--dashboards", type=int)
    p.add_argument("--riders", type=int)
    p.add_argument("--rate", type=float, help="commands per second through the HTTP API")
    p.add_argument("--duration", type=float, help=f"seconds of load (at most {MAX_DURATION:.0f})")
    p.add_argument("--fix-interval", type=float, default=5.0, help="seconds between two fixes of a rider")
    p.add_argument("--clients", type=int, help="load-client processes (default: 4, --quick: 2)")
    p.add_argument("--sample-every", type=int, default=10, help="every n-th dashboard measures position→map")
    p.add_argument("--progress", type=float, default=5.0, help="seconds between progress lines")
    p.add_argument("--db", default="bros_shift_bench", help="the benchmark's database (dropped and created again)")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="Redis of the run (keys under brosbench:)")
    fanout.add_bros_env_argument(p)
    p.add_argument(
        "--quiet-below",
        type=float,
        default=30.0,
        help="before the servers start, wait (at most --quiet-wait s) until the machine is less busy than this %%",
    )
    p.add_argument("--quiet-wait", type=float, default=60.0)
    p.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True, help="pin as bench/fanout.py does")
    p.add_argument("--pin-services", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)
    args.bros_env = fanout.parse_bros_env(p, args.bros_env)
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.clients is None:
        args.clients = 2 if args.quick else 4
    if not 0 < args.duration <= MAX_DURATION:
        p.error(f"--duration must be in (0, {MAX_DURATION:.0f}]")
    if args.rate <= 0 or args.dashboards < 3 or args.riders < 3:
        p.error("--rate must be > 0 and there must be at least 3 dashboards and 3 riders (one per center)")
    if "bench" not in args.db:
        p.error(f"--db {args.db}: the run drops and recreates its database; use a name with 'bench' in it")
    args.dsn = f"postgresql://postgres@127.0.0.1:5432/{args.db}"
    return args


async def main_async(args, pinning: str) -> int:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    logdir = Path(tempfile.mkdtemp(prefix="bros-shift-"))
    log(f"logs in {logdir}; pinning: {pinning}")
    plan = await asyncio.to_thread(prepare, args, logdir)
    shift = Shift(args, plan, logdir, stamp)
    try:
        result = await shift.run()
    finally:
        await shift.stop()
    queries = await asyncio.to_thread(count_queries, plan["token"], logdir)
    row = {
        "bench": "shift",
        "stamp": stamp,
        "servers": args.servers,
        "dashboards": args.dashboards,
        "riders": args.riders,
        "rate": args.rate,
        "duration": args.duration,
        "fix_interval": args.fix_interval,
        "clients": args.clients,
        "pinning": pinning,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": fanout.machine_facts(),
        "queries": queries,
        "result": result,
    }
    out = RESULTS / f"shift-{stamp}.jsonl"
    with open(out, "a") as f:
        f.write(json.dumps(row, separators=(",", ":")) + "\n")
    png = RESULTS / f"shift-{stamp}-s{args.servers}.png"
    chart(row, png)
    print(summary(row), flush=True)
    log(f"results: {out}; chart: {png}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.servers > 1 and not HAPROXY.exists():
        print(f"{HAPROXY} is needed for --servers {args.servers} (apt-get install haproxy)", file=sys.stderr)
        return 2
    fanout.BASE_ENV["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{args.db}"
    fanout.BASE_ENV["REDIS_URL"] = args.redis_url
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    services = ServicePins()

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        pinning = pin_plan(args.servers, args.pin)
        if PIN.on:
            os.sched_setaffinity(0, PIN.rest)  # the runner; its clients inherit it
            PIN.services = services.pin(PIN.rest) if args.pin_services else "not pinned (--no-pin-services)"
            pinning = PIN.describe()
        return asyncio.run(main_async(args, pinning))
    except KeyboardInterrupt:
        return 130
    finally:
        Proc.kill_all_sync()
        services.restore()


if __name__ == "__main__":
    sys.exit(main())
