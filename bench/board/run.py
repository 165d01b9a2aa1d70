"""Dispatcher-board benchmark: the virtual board vs the naive all-rows page, in headless Chromium.

    .venv/bin/python -m bench.board.run                      # everything; soaks 10 min (board), 3 (naive): ~27 min
    .venv/bin/python -m bench.board.run --soak-minutes 1     # a quicker full pass (~12 min)
    .venv/bin/python -m bench.board.run --only board --soak-minutes 3 --no-profile   # the board alone (~5 min)
    .venv/bin/python -m bench.board.run --static-override DIR   # with DIR/deliveries/board.js instead
    .venv/bin/python -m bench.board.run --compare-ref REF    # the board at git REF vs this tree's, side by side
    .venv/bin/python -m bench.board.run --setup-only         # only (re)build the data set
    .venv/bin/python -m bench.board.run --skip-setup ...     # reuse the data as it is

Data (database `bros_board_bench`, Redis prefix `bros-board-bench`, or `$BOARD_BENCH_DB`; made if missing): center
`gangnam` gets exactly 10,000 deliveries (bulk-inserted, see `build_deliveries`) spread over the
last 3 h 50 min, and 500 on-duty riders with live GPS. The setup is idempotent: every run rebuilds
the center's deliveries, so runs start from the same state.

The runner starts one uvicorn process (`bench.board.naive_settings`: BROS plus the naive page
`/bench/naive/gangnam/`, see `naive_urls.py`), logs in as `dispatch-gangnam`, and measures, for
the board and the naive page one after the other (one page open at a time) in the same run. With
`--compare-ref REF` the two pages are instead the board as the code at REF serves it ("before": the
tree exported by `git archive REF` into a temporary folder, its own static files and its own uvicorn
on another port, same database and Redis) and this tree's board, so a change to the board is
measured against what it replaces under the same load, phase by phase:

1. first render (median of `--loads` cold page loads after a warm-up, the pages interleaved): navigation timing, FCP,
   LCP, rows in the DOM / painted, DOM elements, `.row[data-id]` count, JS heap, renderer RSS;
2. bursts of `--burst` real commands (assign / pick up / deliver through `deliveries.services`),
   committed one by one as fast as one connection can, then all in one transaction: long tasks
   (> 50 ms, Performance API) from the first commit until the page shows the final counts + 2 s,
   the same tasks' CPU time from a Chrome trace, the most rows the page ever held, and how long
   after the last commit the page showed the final state;
3. the assign dialog, `--dialog-trials` times: click → `#assign-dialog[open] .candidates
   [role=option]` present, and → the frame after it; the click task's CPU time (trace);
4. a soak at `--rate` commands/s (one `delivery.*` event each: create / assign / pick up /
   deliver in turn) for `--soak-minutes` (board) and `--naive-soak-minutes` (naive page),
   sampling every `--sample-seconds` the JS heap (as is and after a forced GC), renderer RSS,
   DOM elements and rows, main-thread CPU share and the event lag; ~15 s of it under a trace.

Meanwhile every rider reports a GPS fix every `--gps-interval` seconds (`riders.positions.record_fix`),
so the map and rider panel get their once-a-second position batches as in production. Unless
`--no-profile`, a further burst and dialog on the board run under the V8 CPU profiler and a
Chrome trace (not counted in the figures; traces kept), and the busiest functions are printed.

Wall-clock figures include any time the renderer waited for a core (this machine is shared);
the trace's CPU times do not. Output: a table on stdout and `bench/results/board-<time>.json`.
Every process and thread this starts is stopped at the end, also on errors, Ctrl-C and SIGTERM.
See docs/board-benchmark.md.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
RESULTS = REPO / "bench" / "results"
HOST = "127.0.0.1"
CENTER = "gangnam"
DISPATCHER = "dispatch-gangnam"
PASSWORD = "demo"
N_DELIVERIES = 10_000
N_RIDERS = 500
SPREAD = dt.timedelta(hours=3, minutes=50)  # inside the board's default "last 4 h + open" for 10 min
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-precise-memory-info",
]
VIEWPORT = {"width": 1440, "height": 900}
LONG_TASK_MS = 50.0
SERVER_START_TIMEOUT = 60.0
PAGE_TIMEOUT_MS = 180_000

# BOARD_BENCH_DB names another database (and Redis prefix), so two runs on one machine cannot collide.
DATABASE = os.environ.get("BOARD_BENCH_DB", "bros_board_bench")
ENV = {
    "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DATABASE}",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "REDIS_PREFIX": DATABASE.replace("_", "-"),
    "SECRET_KEY": "x",
    "ALLOWED_HOSTS": "127.0.0.1,localhost",
    "DEBUG": "0",
    "SECURE_COOKIES": "0",
    "DJANGO_SETTINGS_MODULE": "bench.board.naive_settings",
    "LOG_LEVEL": "WARNING",
    "PYTHONUNBUFFERED": "1",
}
os.environ.update(ENV)

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.contrib.auth.hashers import make_password  # noqa: E402
from django.db import close_old_connections, connections, transaction  # noqa: E402
from django.utils import timezone  # noqa: E402

from core.models import Center, StaffProfile  # noqa: E402
from deliveries import services  # noqa: E402
from deliveries.demo import FAMILY, GIVEN, VEHICLES  # noqa: E402
from deliveries.models import Delivery, Order, Shop, Source, TimelineEntry  # noqa: E402
from deliveries.selectors import BoardFilter, board_counts  # noqa: E402
from realtime import outbox  # noqa: E402
from riders.models import Rider  # noqa: E402
from riders.positions import record_fix  # noqa: E402
from riders.services import set_rider_duty  # noqa: E402

Status = Delivery.Status
STATUSES = [s.value for s in Status]
# Counts that do not move with the clock: open deliveries are on the board whatever their age,
# while delivered / cancelled ones leave it when they fall out of the "last 4 h" range.
OPEN_STATUSES = [s.value for s in Delivery.OPEN_STATUSES]


def log(*args) -> None:
    print(time.strftime("%H:%M:%S"), *args, flush=True)


# ------------------------------------------------------------------------------------------ setup


def ensure_database() -> None:
    """Create the database (`bros_board_bench`) if it is missing, then migrate and load the demo accounts."""
    import psycopg
    from psycopg import sql

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        if conn.execute("select 1 from pg_database where datname = %s", [DATABASE]).fetchone() is None:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(DATABASE)))
            log(f"created database {DATABASE}")
    env = {**os.environ, **ENV}
    for args in (["migrate", "-v0"], ["seed_demo", "--force"]):
        subprocess.run([PYTHON, "manage.py", *args], cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)


def ensure_riders(center: Center) -> list[int]:
    """500 riders in the center (the demo's 20 plus `rider-gangnam-021` …), made like deliveries/demo.py."""
    have = Rider.objects.filter(center=center).count()
    missing = N_RIDERS - have
    if missing > 0:
        User = get_user_model()
        rng = random.Random(f"{center.code}-bench")
        password = make_password(PASSWORD)  # hashed once, like the demo
        taken = set(
            User.objects.filter(username__startswith=f"rider-{center.code}-").values_list("username", flat=True)
        )
        names = [f"rider-{center.code}-{n:03d}" for n in range(21, 21 + N_RIDERS * 2)]
        usernames = [u for u in names if u not in taken][:missing]
        with transaction.atomic():
            users = User.objects.bulk_create(
                [
                    User(username=u, first_name=f"{rng.choice(FAMILY)} {rng.choice(GIVEN)}", password=password)
                    for u in usernames
                ]
            )
            profiles = StaffProfile.objects.bulk_create(
                [StaffProfile(user=u, role=StaffProfile.Role.RIDER) for u in users]
            )
            StaffProfile.centers.through.objects.bulk_create(
                [StaffProfile.centers.through(staffprofile_id=p.pk, center_id=center.pk) for p in profiles]
            )
            Rider.objects.bulk_create(
                [
                    Rider(
                        user=u,
                        center=center,
                        name=u.first_name,
                        phone=f"010-{2000 + i % 8000:04d}-{rng.randrange(10000):04d}",
                        vehicle=VEHICLES[i % len(VEHICLES)],
                        last_lat=center.lat + rng.uniform(-0.03, 0.03),
                        last_lng=center.lng + rng.uniform(-0.04, 0.04),
                    )
                    for i, u in enumerate(users)
                ]
            )
        log(f"created {len(users)} riders")
    ids = list(Rider.objects.filter(center=center).order_by("pk").values_list("pk", flat=True))
    return ids


def _band_status(rng: random.Random, newest_rank: int) -> str:
    """The status mix of a busy center: recent orders open, older ones mostly delivered."""
    x = rng.random()
    if newest_rank < 600:  # the last ~14 min
        return Status.WAITING if x < 0.7 else Status.ASSIGNED
    if newest_rank < 1500:  # 14-35 min
        return Status.WAITING if x < 0.1 else Status.ASSIGNED if x < 0.5 else Status.PICKED_UP
    if newest_rank < 2100:  # 35-48 min
        return Status.PICKED_UP if x < 0.5 else Status.DELIVERED
    return Status.PICKED_UP if x < 0.01 else Status.CANCELLED if x < 0.04 else Status.DELIVERED


def build_deliveries(center: Center, rider_ids: list[int]) -> dict[str, int]:
    """Replace the center's orders and deliveries with N_DELIVERIES bulk-inserted ones.

    Bulk inserts (not `services.create_order` + transitions, which would take minutes) of orders,
    deliveries and one "created" timeline entry each, no outbox events; then `created_at` and the
    other times are spread over the last SPREAD with `bulk_update`, and every rider's `load` is set
    to their active deliveries, as the services would have left it.
    """
    rng = random.Random(20261122)
    shops = list(Shop.objects.filter(center=center, is_active=True).order_by("pk"))
    now = timezone.now()
    step = SPREAD / N_DELIVERIES
    with transaction.atomic():
        TimelineEntry.objects.filter(delivery__center=center).delete()
        Delivery.objects.filter(center=center).delete()
        Order.objects.filter(center=center).delete()
        plans = []
        for k in range(N_DELIVERIES):  # k = 0 is the oldest
            newest_rank = N_DELIVERIES - 1 - k
            created = now - SPREAD + k * step
            status = _band_status(rng, newest_rank)
            shop = shops[k % len(shops)]
            plans.append((created, status, shop))
        orders = Order.objects.bulk_create(
            [
                Order(
                    center=center,
                    shop=shop,
                    customer_name=f"{rng.choice(FAMILY)} {rng.choice(GIVEN)}",
                    customer_phone=f"010-{rng.randrange(10000):04d}-{rng.randrange(10000):04d}",
                    address=f"{rng.randrange(1, 999)} Teheran-ro {rng.randrange(1, 60)}-gil, Gangnam-gu, Seoul",
                    lat=center.lat + rng.uniform(-0.03, 0.03),
                    lng=center.lng + rng.uniform(-0.04, 0.04),
                    items=[{"name": rng.choice(["Fried chicken", "Bibimbap", "Pizza", "Tteokbokki"]), "qty": 1}],
                    promised_at=created + dt.timedelta(minutes=rng.randrange(35, 56)),
                    status={Status.DELIVERED: Order.Status.DELIVERED, Status.CANCELLED: Order.Status.CANCELLED}.get(
                        status, Order.Status.PLACED
                    ),
                    cancel_reason="Customer called to cancel" if status == Status.CANCELLED else "",
                    version=1 if status not in (Status.DELIVERED, Status.CANCELLED) else 2,
                )
                for created, status, shop in plans
            ],
            batch_size=2000,
        )
        deliveries = []
        active_rr = 0
        for order, (created, status, shop) in zip(orders, plans, strict=True):
            age = now - created
            d = Delivery(order=order, center=center, shop=shop, status=status)
            if status in (Status.ASSIGNED, Status.PICKED_UP):
                d.rider_id = rider_ids[active_rr % len(rider_ids)]
                active_rr += 1
            elif status == Status.DELIVERED:
                d.rider_id = rng.choice(rider_ids)
            if status != Status.WAITING and status != Status.CANCELLED:
                d.assigned_at = created + min(age * 0.3, dt.timedelta(minutes=6))
            if status in (Status.PICKED_UP, Status.DELIVERED):
                d.picked_up_at = created + min(age * 0.6, dt.timedelta(minutes=18))
            if status == Status.DELIVERED:
                d.delivered_at = created + min(age * 0.9, dt.timedelta(minutes=35))
            if status == Status.CANCELLED:
                d.cancelled_at = created + min(age * 0.5, dt.timedelta(minutes=10))
            d.version = {Status.WAITING: 1, Status.ASSIGNED: 2, Status.PICKED_UP: 3}.get(status, 4)
            deliveries.append(d)
        deliveries = Delivery.objects.bulk_create(deliveries, batch_size=2000)
        entries = TimelineEntry.objects.bulk_create(
            [
                TimelineEntry(
                    delivery=d, actor_label="bench setup", source=Source.SYSTEM, action="created", to_status="waiting"
                )
                for d in deliveries
            ],
            batch_size=2000,
        )
        # auto_now_add wrote "now" everywhere: spread the times as planned.
        for order, d, entry, (created, _status, _shop) in zip(orders, deliveries, entries, plans, strict=True):
            order.created_at = d.created_at = d.updated_at = entry.at = created
        Order.objects.bulk_update(orders, ["created_at"], batch_size=1000)
        Delivery.objects.bulk_update(deliveries, ["created_at", "updated_at"], batch_size=1000)
        TimelineEntry.objects.bulk_update(entries, ["at"], batch_size=1000)
        loads = dict.fromkeys(rider_ids, 0)
        for d in deliveries:
            if d.status in Delivery.ACTIVE_STATUSES:
                loads[d.rider_id] += 1
        riders = list(Rider.objects.filter(pk__in=rider_ids))
        for rider in riders:
            rider.load = loads[rider.pk]
        Rider.objects.bulk_update(riders, ["load"], batch_size=1000)
    counts: dict[str, int] = {}
    for d in deliveries:
        counts[str(d.status)] = counts.get(str(d.status), 0) + 1
    return counts


def put_riders_on_duty(rider_ids: list[int]) -> int:
    off = list(Rider.objects.filter(pk__in=rider_ids, on_duty=False).values_list("pk", flat=True))
    for pk in off:
        set_rider_duty(actor=None, rider_id=pk, on_duty=True)
    return len(off)


def setup_data() -> dict:
    started = time.monotonic()
    ensure_database()
    center = Center.objects.get(code=CENTER)
    rider_ids = ensure_riders(center)
    # Loads first go back to what the new deliveries imply, so no rider is left with a load.
    counts = build_deliveries(center, rider_ids)
    on = put_riders_on_duty(rider_ids)
    gps = Gps(center, rider_ids, interval=1.0)
    gps.fix_all()
    info = {
        "deliveries": sum(counts.values()),
        "by_status": counts,
        "riders": len(rider_ids),
        "put_on_duty": on,
        "seconds": round(time.monotonic() - started, 1),
    }
    log(f"setup: {info}")
    return info


# ------------------------------------------------------------------------------ load: GPS, commands


class Gps:
    """Every rider of the center reports a fix every `interval` s (spread evenly), on a random walk."""

    def __init__(self, center: Center, rider_ids: list[int], *, interval: float):
        self.center = center.code
        self.interval = interval
        self.rng = random.Random(7)
        self.spots = {
            pk: [center.lat + self.rng.uniform(-0.03, 0.03), center.lng + self.rng.uniform(-0.04, 0.04)]
            for pk in rider_ids
        }
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.sent = 0

    def _fix(self, pk: int) -> None:
        spot = self.spots[pk]
        spot[0] += self.rng.uniform(-0.0004, 0.0004)
        spot[1] += self.rng.uniform(-0.0005, 0.0005)
        record_fix(rider_id=pk, center_code=self.center, lat=spot[0], lng=spot[1], ts=timezone.now(), accuracy=8.0)
        self.sent += 1

    def fix_all(self) -> None:
        for pk in self.spots:
            self._fix(pk)

    def _run(self) -> None:
        ids = list(self.spots)
        per_second = max(1, round(len(ids) / self.interval))
        i = 0
        next_at = time.monotonic()
        while not self.stop.is_set():
            for _ in range(per_second):
                self._fix(ids[i % len(ids)])
                i += 1
            next_at += 1.0
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="gps", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread:
            self.thread.join(timeout=10)


class Driver:
    """Commits real commands through the services, in one thread of its own (Django's ORM is sync-only)."""

    def __init__(self, center_code: str, rider_ids: list[int], seed: int = 11):
        self.center = center_code
        self.rider_ids = rider_ids
        self.rng = random.Random(seed)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="driver")
        self.failed = 0
        self.errors: list[str] = []
        self.shops: list[int] = []
        self.waiting: list[int] = []
        self.assigned: list[int] = []
        self.picked: list[int] = []

    def call(self, fn, *args, **kwargs):
        return self.pool.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call(connections.close_all)
        self.pool.shutdown(wait=True, cancel_futures=True)

    # -- in the driver thread --

    def load_pools(self) -> None:
        close_old_connections()
        ds = Delivery.objects.filter(center__code=self.center)
        self.waiting = list(ds.filter(status=Status.WAITING).order_by("created_at").values_list("pk", flat=True))
        self.assigned = list(ds.filter(status=Status.ASSIGNED).order_by("created_at").values_list("pk", flat=True))
        self.picked = list(ds.filter(status=Status.PICKED_UP).order_by("created_at").values_list("pk", flat=True))
        self.shops = list(Shop.objects.filter(center__code=self.center, is_active=True).values_list("pk", flat=True))
        for pool in (self.waiting, self.assigned, self.picked):
            self.rng.shuffle(pool)

    def _take(self, pool: list[int]) -> int | None:
        return pool.pop() if pool else None

    def command(self, kind: str) -> str:
        """Run one command of `kind` (falling back to creating an order when its pool is empty)."""
        try:
            if kind == "assign" and self.waiting:
                pk = self._take(self.waiting)
                services.assign_delivery(actor=None, delivery_id=pk, rider_id=self.rng.choice(self.rider_ids))
                self.assigned.insert(0, pk)
            elif kind == "pick_up" and self.assigned:
                pk = self._take(self.assigned)
                services.pick_up_delivery(actor=None, delivery_id=pk)
                self.picked.insert(0, pk)
            elif kind == "deliver" and self.picked:
                pk = self._take(self.picked)
                services.deliver_delivery(actor=None, delivery_id=pk)
            else:
                kind = "create"
                order = services.create_order(
                    actor=None,
                    shop_id=self.rng.choice(self.shops),
                    customer_name=f"{self.rng.choice(FAMILY)} {self.rng.choice(GIVEN)}",
                    customer_phone=f"010-{self.rng.randrange(10000):04d}-{self.rng.randrange(10000):04d}",
                    address=f"{self.rng.randrange(1, 999)} Nonhyeon-ro, Gangnam-gu, Seoul",
                    items=[{"name": "Fried chicken", "qty": 1}],
                )
                self.waiting.insert(0, order.delivery.pk)
        except Exception as exc:  # a refused command is counted, never fatal
            self.failed += 1
            if len(self.errors) < 10:
                self.errors.append(f"{kind}: {exc!r}")
        return kind

    def burst(self, n: int, *, atomic: bool = False) -> dict:
        """`n` commands (assign, pick up, deliver in turn): each committed as fast as one connection
        can (`atomic=False`), or all in one transaction, so their events are published together."""
        close_old_connections()
        kinds = ["assign", "pick_up", "deliver"]
        t0 = time.time()
        with transaction.atomic() if atomic else contextlib.nullcontext():
            done = [self.command(kinds[i % 3]) for i in range(n)]
        t1 = time.time()
        return {"t_first": t0, "t_last": t1, "commands": n, "by_kind": {k: done.count(k) for k in set(done)}}

    def soak(self, *, rate: float, seconds: float, stop: threading.Event) -> dict:
        """`rate` commands/s (create, assign, pick up, deliver in turn) for `seconds`; never bursts to catch up."""
        close_old_connections()
        kinds = ["create", "assign", "pick_up", "deliver"]
        started = time.monotonic()
        deadline = started + seconds
        n, late = 0, 0
        while not stop.is_set():
            due = started + n / rate
            if due >= deadline:
                break
            wait = due - time.monotonic()
            if wait > 0:
                stop.wait(wait)
            elif wait < -1.0:
                late += 1
                started += -wait  # running behind: move the schedule instead of bursting
            self.command(kinds[n % 4])
            n += 1
        elapsed = time.monotonic() - (deadline - seconds)
        return {
            "commands": n,
            "seconds": round(elapsed, 1),
            "rate": round(n / max(elapsed, 1e-9), 2),
            "late_resets": late,
        }

    def counts(self) -> dict[str, int]:
        close_old_connections()
        counts = board_counts(center_code=self.center, board=BoardFilter(), now=timezone.now())
        return {s: counts[s] for s in STATUSES}

    def head(self) -> int:
        close_old_connections()
        return outbox.stream_position(f"deliveries:{self.center}")[1]


# ------------------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """One uvicorn process serving BROS and the naive page from the tree at `root`, in its own process group."""

    def __init__(self, log_path: Path, root: Path = REPO, env: dict | None = None):
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        self.root = root
        self.env = {**os.environ, **ENV} if env is None else env
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> None:
        env = self.env
        subprocess.run(
            [PYTHON, "manage.py", "collectstatic", "--noinput", "--clear", "-v0"], cwd=self.root, env=env, check=True
        )  # into <root>/bench/board/.static, afresh: that tree's static/ (and override) with the production storage
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "uvicorn",
                "bros.asgi:application",
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--ws",
                "websockets-sansio",
                "--lifespan",
                "on",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            cwd=self.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
        )
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {self.proc.returncode}; see {self.log_path}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.base}/accounts/login/", timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.3)
        raise RuntimeError(f"uvicorn did not answer within {SERVER_START_TIMEOUT:.0f} s; see {self.log_path}")

    def wait_idle(self, limit: float = 600.0) -> float:
        """Wait until the server answers a cheap page fast again (the naive page leaves a backlog of
        full renders behind: Django runs sync views one at a time). Return the seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < limit:
            t = time.monotonic()
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{self.base}/accounts/login/", timeout=limit).read()
            if time.monotonic() - t < 0.5:
                break
        waited = time.monotonic() - started
        if waited > 1:
            log(f"server backlog drained in {waited:.0f} s")
        return waited

    def rss_mb(self) -> float | None:
        try:
            import psutil

            return round(psutil.Process(self.proc.pid).memory_info().rss / 2**20, 1)
        except Exception:
            return None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        if self._log:
            self._log.close()


# ------------------------------------------------------------------------------- in the page (JS)

# Installed before any page script: long tasks, LCP, when rows reach the DOM and the screen, and
# every replacement of the row window with the counts it carries.
INIT_SCRIPT = """
(() => {
  const B = (window.__bench = { longtasks: [], lcp: null, rowsInDom: null, rowsPainted: null, swaps: [] });
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) B.longtasks.push([e.startTime, e.duration]);
    }).observe({ type: "longtask", buffered: true });
  } catch (e) {}
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) B.lcp = e.startTime;
    }).observe({ type: "largest-contentful-paint", buffered: true });
  } catch (e) {}
  const found = new MutationObserver(() => {
    if (B.rowsInDom !== null || !document.querySelector(".row[data-id]")) return;
    B.rowsInDom = performance.now();
    found.disconnect();
    requestAnimationFrame(() => setTimeout(() => (B.rowsPainted = performance.now()), 0));
  });
  found.observe(document, { childList: true, subtree: true });
  document.addEventListener("DOMContentLoaded", () => {
    const rows = document.getElementById("rows");
    if (!rows) return;
    new MutationObserver(() => {
      const w = rows.querySelector(".window");
      B.swaps.push([Date.now(), w ? w.dataset.counts : null, rows.querySelectorAll(".row[data-id]").length]);
    }).observe(rows, { childList: true });
  });
})();
"""

FIRST_RENDER_JS = """
() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const fcp = performance.getEntriesByName("first-contentful-paint")[0];
  const until = nav.loadEventEnd + 2000;
  const long = window.__bench.longtasks.filter(([s]) => s <= until).map(([, d]) => d);
  return {
    ttfb_ms: nav.responseStart,
    response_end_ms: nav.responseEnd,
    dom_content_loaded_ms: nav.domContentLoadedEventEnd,
    load_ms: nav.loadEventEnd,
    fcp_ms: fcp ? fcp.startTime : null,
    lcp_ms: window.__bench.lcp,
    rows_in_dom_ms: window.__bench.rowsInDom,
    rows_visible_ms: window.__bench.rowsPainted,
    html_kb: nav.decodedBodySize / 1024,
    dom_nodes: document.getElementsByTagName("*").length,
    dom_rows: document.querySelectorAll(".row[data-id]").length,
    js_heap_mb: performance.memory.usedJSHeapSize / 2 ** 20,
    load_long_tasks: long.length,
    load_long_task_max_ms: long.length ? Math.max(...long) : 0,
    load_blocking_ms: long.reduce((a, d) => a + Math.max(0, d - 50), 0),
  };
}
"""

STATE_JS = """
() => ({
  nodes: document.getElementsByTagName("*").length,
  rows: document.querySelectorAll(".row[data-id]").length,
  heap: performance.memory.usedJSHeapSize,
  seq: window.__board?.rt?._subs?.get("deliveries:CENTER")?.last ?? null,
  time_origin: performance.timeOrigin,
  longtasks: window.__bench.longtasks.length,
})
""".replace("CENTER", CENTER)

# Click an assign button and wait, inside the page, for the dialog with its candidates.
DIALOG_JS = """
async (nth) => {
  const rows = [...document.querySelectorAll("#rows .row[data-id]")]
    .filter((r) => r.querySelector("[data-action=assign]"));
  if (!rows.length) return { error: "no row with an assign button" };
  const button = rows[nth % Math.min(rows.length, 15)].querySelector("[data-action=assign]");
  const selector = "#assign-dialog[open] .candidates [role=option]";
  const t0 = performance.now();
  button.click();
  let found = document.querySelector(selector);
  const t1 = performance.now();
  while (!found && performance.now() - t0 < 5000) {
    await new Promise((r) => requestAnimationFrame(r));
    found = document.querySelector(selector);
  }
  const t2 = performance.now();
  await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));  // the frame that shows it
  const t3 = performance.now();
  const candidates = document.querySelectorAll("#assign-dialog .candidates [role=option]").length;
  document.getElementById("assign-dialog").close();
  return { sync_ms: found ? t2 - t0 : null, handler_ms: t1 - t0, painted_ms: t3 - t0, candidates };
}
"""


def pct(values: list[float], p: float) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def long_tasks_between(page, t_from: float, t_to: float) -> list[float]:
    """Durations of the page's long tasks that started between two wall-clock times (s)."""
    origin = page.evaluate("performance.timeOrigin")
    tasks = page.evaluate("window.__bench.longtasks")
    lo, hi = t_from * 1000 - origin, t_to * 1000 - origin
    return [d for s, d in tasks if lo <= s <= hi]


# --------------------------------------------------------------------------------- measurements


class Bench:
    def __init__(self, args, server: Server, driver: Driver, browser, context, before: Server | None = None):
        self.args = args
        self.server = server
        self.driver = driver
        self.browser = browser
        self.context = context
        self.urls = {"board": f"{server.base}/dispatch/{CENTER}/", "naive": f"{server.base}/bench/naive/{CENTER}/"}
        if before is not None:
            self.urls["before"] = f"{before.base}/dispatch/{CENTER}/"

    def trace_path(self, name: str) -> Path:
        return RESULTS / f"board-{self.args.stamp}-trace-{name}.json"

    def open(self, which: str, query: str = ""):
        page = self.context.new_page()
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        page.goto(self.urls[which] + query, wait_until="load", timeout=PAGE_TIMEOUT_MS)
        page.wait_for_function("window.__bench.rowsPainted !== null", timeout=PAGE_TIMEOUT_MS)
        return page

    def settle(self, page, seconds: float = 3.0) -> None:
        page.wait_for_timeout(seconds * 1000)

    def renderer_mb(self) -> float | None:
        """RSS of the largest renderer process (the one page open; the DOM lives there, not in the JS heap)."""
        try:
            import psutil

            cdp = self.browser.new_browser_cdp_session()
            try:
                infos = cdp.send("SystemInfo.getProcessInfo")["processInfo"]
            finally:
                cdp.detach()
            rss = [psutil.Process(int(i["id"])).memory_info().rss for i in infos if i.get("type") == "renderer"]
            return round(max(rss) / 2**20, 1) if rss else None
        except Exception:
            return None

    def cdp_metrics(self, page, *, gc: bool = False) -> dict:
        cdp = self.context.new_cdp_session(page)
        try:
            if gc:
                cdp.send("HeapProfiler.collectGarbage")
            cdp.send("Performance.enable")
            metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
        finally:
            cdp.detach()
        return metrics

    # -- 1. first render

    def first_renders(self, pages: list[str]) -> dict[str, dict]:
        """`--loads` cold loads of each page, interleaved (A B, then B A, ...), after one warm-up each.

        Interleaved so that neither page is always measured first, or always while the machine
        is busier: the compared pages share every drift of the run. Median per metric.
        """
        runs: dict[str, list[dict]] = {which: [] for which in pages}
        for i in range(self.args.loads + 1):  # round 0 warms the servers up and is not counted
            for which in pages if i % 2 == 0 else pages[::-1]:
                m = self.load_once(which)
                if i:
                    runs[which].append(m)
        results = {}
        for which, measured in runs.items():
            result = {
                k: statistics.median(vs) for k in measured[0] if (vs := [r[k] for r in measured if r[k] is not None])
            }
            result["runs"] = measured
            log(
                f"{which}: first render ttfb {result['ttfb_ms']:.0f} ms, DCL {result['dom_content_loaded_ms']:.0f} ms, "
                f"load {result['load_ms']:.0f} ms, rows visible {result['rows_visible_ms']:.0f} ms, "
                f"{result['dom_rows']:.0f} rows, {result['dom_nodes']:.0f} nodes"
            )
            results[which] = result
        return results

    def load_once(self, which: str) -> dict:
        page = self.open(which)
        self.settle(page, 2.0)
        m = page.evaluate(FIRST_RENDER_JS)
        m["js_heap_after_gc_mb"] = self.cdp_metrics(page, gc=True)["JSHeapUsedSize"] / 2**20
        m["renderer_rss_mb"] = self.renderer_mb()
        page.close()
        return m

    # -- 2. a burst of events

    def burst(self, which: str, *, mode: str = "serial", profile: bool = False) -> dict:
        """Commit `--burst` commands (serially, or all in one transaction) and watch the page apply them."""
        page = self.open(which)
        self.settle(page)
        before = page.evaluate(STATE_JS)
        trace_path = self.trace_path(f"{which}-burst-{mode}{'-profiled' if profile else ''}")
        cdp = None
        if profile:
            cdp = self.context.new_cdp_session(page)
            cdp.send("Profiler.enable")
            cdp.send("Profiler.setSamplingInterval", {"interval": 250})
        self.browser.start_tracing(page=page, path=str(trace_path), categories=TRACE_CATEGORIES)
        if cdp:
            cdp.send("Profiler.start")
        b = self.driver.call(self.driver.burst, self.args.burst, atomic=mode == "atomic")
        expected = self.driver.call(self.driver.counts)
        head = self.driver.call(self.driver.head)
        # Wait (bounded) for a window swap carrying the final counts.
        applied_at = None
        deadline = time.monotonic() + 180
        while applied_at is None and time.monotonic() < deadline:
            for at, counts, _rows in page.evaluate("window.__bench.swaps"):
                if counts and at >= b["t_first"] * 1000:
                    shown = json.loads(counts)
                    if all(shown.get(s) == expected[s] for s in OPEN_STATUSES):
                        applied_at = at / 1000
                        break
            else:
                page.wait_for_timeout(100)
        page.wait_for_timeout(2000)
        after = page.evaluate(STATE_JS)
        top = summarize_profile(cdp.send("Profiler.stop")["profile"]) if cdp else None
        self.browser.stop_tracing()
        if cdp:
            cdp.detach()
        end = (applied_at or time.time()) + 2.0
        long = long_tasks_between(page, b["t_first"], end)
        swaps = [
            (at, n) for at, _c, n in page.evaluate("window.__bench.swaps") if b["t_first"] * 1000 <= at <= end * 1000
        ]
        page.close()
        trace = summarize_trace(trace_path, keep=profile)
        result = {
            "mode": mode,
            "commands": b["commands"],
            "by_kind": b["by_kind"],
            "commit_ms": round((b["t_last"] - b["t_first"]) * 1000),
            "applied_after_last_commit_ms": round((applied_at - b["t_last"]) * 1000) if applied_at else None,
            "applied_after_first_commit_ms": round((applied_at - b["t_first"]) * 1000) if applied_at else None,
            "window_swaps": len(swaps),
            "events_applied": (after["seq"] - before["seq"]) if after["seq"] is not None else None,
            "stream_head_gap": (head - after["seq"]) if after["seq"] is not None else None,
            "long_tasks": len(long),
            "long_task_max_ms": round(max(long), 1) if long else 0,
            "blocking_ms": round(sum(d - LONG_TASK_MS for d in long), 1),
            "max_dom_rows": max([before["rows"], after["rows"], *(n for _at, n in swaps)]),
            "cpu_long_tasks": trace.get("cpu_long_tasks"),
            "cpu_long_task_max_ms": trace.get("cpu_long_task_max_ms"),
            "main_thread_cpu_ms": trace.get("task_cpu_ms"),
            "load_avg": os.getloadavg()[0],
            "trace": trace,
        }
        if top is not None:
            result["profile"] = top
        brief = {k: v for k, v in result.items() if k not in ("trace", "profile", "by_kind")}
        log(f"{which}: burst ({mode}{', profiled' if profile else ''}) {brief}")
        if which == "naive":
            self.server.wait_idle()
        return result

    # -- 3. the assign dialog

    def dialog(self, which: str, *, profile: bool = False) -> dict:
        """Open the assign dialog `--dialog-trials` times (newest first, so the top rows can be assigned)."""
        page = self.open(which, query="?sort=newest")
        self.settle(page)
        trace_path = self.trace_path(f"{which}-dialog{'-profiled' if profile else ''}")
        cdp = None
        if profile:
            cdp = self.context.new_cdp_session(page)
            cdp.send("Profiler.enable")
            cdp.send("Profiler.setSamplingInterval", {"interval": 100})
        self.browser.start_tracing(page=page, path=str(trace_path), categories=TRACE_CATEGORIES)
        if cdp:
            cdp.send("Profiler.start")
        trials = []
        t_from = time.time()
        for i in range(self.args.dialog_trials):
            trials.append(page.evaluate(DIALOG_JS, i))
            page.wait_for_timeout(250)
        long = long_tasks_between(page, t_from, time.time())
        top = summarize_profile(cdp.send("Profiler.stop")["profile"]) if cdp else None
        self.browser.stop_tracing()
        if cdp:
            cdp.detach()
        page.close()
        trace = summarize_trace(trace_path, keep=profile)
        errors = [t["error"] for t in trials if "error" in t]
        if errors:
            raise RuntimeError(f"{which}: dialog: {errors[0]}")
        sync = [t["sync_ms"] for t in trials]
        painted = [t["painted_ms"] for t in trials]
        result = {
            "trials": len(trials),
            "candidates": trials[0]["candidates"],
            "open_p50_ms": pct(sync, 50),
            "open_p95_ms": pct(sync, 95),
            "painted_p50_ms": pct(painted, 50),
            "painted_p95_ms": pct(painted, 95),
            "long_tasks": len(long),
            "long_task_max_ms": round(max(long), 1) if long else 0,
            "cpu_long_tasks": trace.get("cpu_long_tasks"),
            "click_cpu_p50_ms": pct(trace.get("click_task_cpu_ms", []), 50),
            "click_cpu_p95_ms": pct(trace.get("click_task_cpu_ms", []), 95),
            "load_avg": os.getloadavg()[0],
            "raw": trials,
            "trace": trace,
        }
        if top is not None:
            result["profile"] = top
        log(
            f"{which}: dialog{' (profiled)' if profile else ''} open p50 {result['open_p50_ms']:.1f} / "
            f"p95 {result['open_p95_ms']:.1f} ms, painted p50 {result['painted_p50_ms']:.1f} / "
            f"p95 {result['painted_p95_ms']:.1f} ms, {result['candidates']} candidates, {len(long)} long tasks"
        )
        return result

    # -- 4. the soak

    def soak(self, which: str, minutes: float) -> dict:
        page = self.open(which)
        self.settle(page)
        stop = threading.Event()
        seconds = minutes * 60
        future = self.driver.pool.submit(self.driver.soak, rate=self.args.rate, seconds=seconds, stop=stop)
        samples = []
        previous = None
        cdp = self.context.new_cdp_session(page)
        cdp.send("Performance.enable")
        trace_path, traced = self.trace_path(f"{which}-soak"), None
        started, started_wall = time.monotonic(), time.time()
        try:
            while True:
                elapsed = time.monotonic() - started
                state = page.evaluate(STATE_JS)
                heap_raw = state["heap"]
                work = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
                cdp.send("HeapProfiler.collectGarbage")
                metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
                head = stream_head_now(self.driver)
                busy = {}
                if previous is not None:
                    span = max(work["Timestamp"] - previous["Timestamp"], 1e-9)
                    for key, name in (("ThreadTime", "cpu"), ("TaskDuration", "task"), ("ScriptDuration", "script")):
                        busy[f"main_{name}_pct"] = round(100 * (work[key] - previous[key]) / span, 1)
                    layout = work["LayoutDuration"] + work["RecalcStyleDuration"]
                    layout -= previous["LayoutDuration"] + previous["RecalcStyleDuration"]
                    busy["main_layout_style_pct"] = round(100 * layout / span, 1)
                previous = work
                sample = {
                    "t_s": round(elapsed, 1),
                    **busy,
                    "heap_mb": round(heap_raw / 2**20, 2),
                    "heap_after_gc_mb": round(metrics["JSHeapUsedSize"] / 2**20, 2),
                    "dom_nodes": state["nodes"],
                    "nodes_incl_detached": int(metrics["Nodes"]),
                    "listeners": int(metrics["JSEventListeners"]),
                    "dom_rows": state["rows"],
                    "long_tasks_total": state["longtasks"],
                    "event_lag": (head - state["seq"]) if (head is not None and state["seq"] is not None) else None,
                    "renderer_rss_mb": self.renderer_mb(),
                    "server_rss_mb": self.server.rss_mb(),
                    "load_avg": os.getloadavg()[0],
                }
                samples.append(sample)
                log(f"{which}: soak {sample}")
                # 10 s after the first sample run under a Chrome trace: long tasks by CPU time. It is
                # summarized after the soak (parsing it here would starve the command thread).
                if len(samples) == 1 and not future.done() and seconds - elapsed > 15:
                    t0 = time.monotonic() - started
                    self.browser.start_tracing(page=page, path=str(trace_path), categories=TRACE_CATEGORIES)
                    page.wait_for_timeout(10_000)
                    self.browser.stop_tracing()
                    traced = {"from_s": round(t0, 1), "to_s": round(time.monotonic() - started, 1)}
                if future.done() or elapsed >= seconds:
                    break
                elapsed = time.monotonic() - started
                remaining = min(self.args.sample_seconds * len(samples) - elapsed, seconds - elapsed)
                page.wait_for_timeout(max(0.0, remaining) * 1000)
        finally:
            stop.set()
            driven = future.result(timeout=120)
            cdp.detach()
        if traced is not None:
            traced.update(summarize_trace(trace_path))
        # Let the page catch up (bounded), then the last sample.
        page.wait_for_timeout(3000)
        long_all = page.evaluate("window.__bench.longtasks")
        origin = page.evaluate("performance.timeOrigin")
        swap_rows = [n for at, _c, n in page.evaluate("window.__bench.swaps") if at >= started_wall * 1000]
        page.close()
        soak_from = started_wall * 1000 - origin
        long = [d for s, d in long_all if s >= soak_from]
        heaps = [s["heap_after_gc_mb"] for s in samples]
        result = {
            "minutes": minutes,
            "driven": driven,
            "samples": samples,
            "heap_start_mb": heaps[0],
            "heap_end_mb": heaps[-1],
            "heap_max_mb": max(heaps),
            "heap_raw_max_mb": max(s["heap_mb"] for s in samples),
            "max_dom_rows": max([*(s["dom_rows"] for s in samples), *swap_rows]),
            "window_swaps": len(swap_rows),
            "main_cpu_pct_avg": round(statistics.mean(cpu), 1)
            if (cpu := [s["main_cpu_pct"] for s in samples[1:]])
            else None,
            "end_dom_nodes": samples[-1]["dom_nodes"],
            "long_tasks": len(long),
            "long_task_max_ms": round(max(long), 1) if long else 0,
            "long_tasks_per_min": round(len(long) / max(minutes, 1e-9), 1),
            "max_event_lag": max((s["event_lag"] or 0) for s in samples),
            "events_per_s": driven["rate"],
            "renderer_rss_start_mb": samples[0]["renderer_rss_mb"],
            "renderer_rss_end_mb": samples[-1]["renderer_rss_mb"],
            "renderer_rss_max_mb": max((s["renderer_rss_mb"] or 0) for s in samples),
            "traced": traced,
            "cpu_long_tasks_per_min": round(
                60 * traced["cpu_long_tasks"] / max(traced["to_s"] - traced["from_s"], 1e-9), 1
            )
            if traced and "cpu_long_tasks" in traced
            else None,
        }
        return result


def stream_head_now(driver: Driver) -> int | None:
    """The stream head, read in its own short-lived thread (the driver thread is busy soaking)."""
    box: dict = {}

    def read():
        try:
            box["head"] = outbox.stream_position(f"deliveries:{driver.center}")[1]
        finally:
            connections.close_all()

    t = threading.Thread(target=read, name="head")
    t.start()
    t.join(timeout=10)
    return box.get("head")


# ------------------------------------------------------------------------------ profile summaries

TRACE_CATEGORIES = ["toplevel", "devtools.timeline", "disabled-by-default-devtools.timeline", "v8.execute"]
TASK_EVENTS = ("ThreadControllerImpl::RunTask", "RunTask")  # the outermost task event, whichever is there
WORK_EVENTS = {
    "FunctionCall",
    "EventDispatch",
    "TimerFire",
    "FireAnimationFrame",
    "ParseHTML",
    "EvaluateScript",
    "v8.evaluateModule",
    "UpdateLayoutTree",
    "Layout",
    "PrePaint",
    "Paint",
    "Layerize",
    "HitTest",
    "MajorGC",
    "MinorGC",
    "V8.GC_MC_BACKGROUND_MARKING",
}


def summarize_profile(profile: dict, top: int = 15) -> dict:
    """Self and total (inclusive) time per function of a V8 CPU profile, busiest first."""
    nodes = {n["id"]: n for n in profile["nodes"]}
    parent = {}
    for n in profile["nodes"]:
        for c in n.get("children", []):
            parent[c] = n["id"]

    def label(node) -> str:
        f = node["callFrame"]
        url = f.get("url", "").rsplit("/", 1)[-1].split("?")[0]
        name = f.get("functionName") or "(anonymous)"
        return f"{name} {url}:{f.get('lineNumber', -1) + 1}" if url else name

    self_ms: dict[str, float] = {}
    total_ms: dict[str, float] = {}
    for sample, delta in zip(profile["samples"], profile["timeDeltas"], strict=False):
        ms = delta / 1000
        node = nodes[sample]
        self_ms[label(node)] = self_ms.get(label(node), 0) + ms
        seen = set()
        nid = sample
        while nid is not None:
            lab = label(nodes[nid])
            if lab not in seen:
                total_ms[lab] = total_ms.get(lab, 0) + ms
                seen.add(lab)
            nid = parent.get(nid)
    skip = {"(idle)", "(root)", "(program)"}
    return {
        "self_ms": [(k, round(v, 1)) for k, v in sorted(self_ms.items(), key=lambda kv: -kv[1]) if k not in skip][:top],
        "total_ms": [(k, round(v, 1)) for k, v in sorted(total_ms.items(), key=lambda kv: -kv[1]) if k not in skip][
            :top
        ],
        "program_ms": round(self_ms.get("(program)", 0), 1),
        "gc_ms": round(self_ms.get("(garbage collector)", 0), 1),
    }


def _work_label(e: dict) -> str:
    data = e.get("args", {}).get("data") or e.get("args", {}).get("beginData") or {}
    name = e["name"]
    if name == "FunctionCall" and data:
        url = str(data.get("url", "")).rsplit("/", 1)[-1].split("?")[0]
        fn = data.get("functionName") or "(anonymous)"
        return f"FunctionCall {fn} {url}:{int(data.get('lineNumber', 0)) + 1}" if url else f"FunctionCall {fn}"
    if name == "EventDispatch" and data.get("type"):
        return f"EventDispatch {data['type']}"
    return name


def summarize_trace(path: Path, *, keep: bool = False) -> dict:
    """Main-thread work in a Chrome trace: long tasks by wall time and by CPU (thread) time, what
    ran inside them, and the total time per kind of work. The trace file is deleted unless `keep`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    finally:
        if not keep:
            with contextlib.suppress(OSError):
                Path(path).unlink()
    events = data["traceEvents"] if isinstance(data, dict) else data
    main = {
        (e["pid"], e["tid"])
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name" and e.get("args", {}).get("name") == "CrRendererMain"
    }
    on_main = [e for e in events if e.get("ph") == "X" and (e.get("pid"), e.get("tid")) in main]
    task_name = next((n for n in TASK_EVENTS if any(e["name"] == n for e in on_main)), None)
    tasks = sorted((e for e in on_main if e["name"] == task_name), key=lambda e: e["ts"])
    work = sorted((e for e in on_main if e["name"] in WORK_EVENTS), key=lambda e: e["ts"])
    totals: dict[str, float] = {}
    for e in work:
        totals[e["name"]] = totals.get(e["name"], 0) + e.get("dur", 0) / 1000
    starts = [e["ts"] for e in work]
    long, clicks = [], []
    for t in tasks:
        wall, cpu = t.get("dur", 0) / 1000, t.get("tdur", t.get("dur", 0)) / 1000
        inside_events = work[bisect.bisect_left(starts, t["ts"]) : bisect.bisect_right(starts, t["ts"] + t["dur"])]
        if any(_work_label(e) == "EventDispatch click" for e in inside_events):
            clicks.append(cpu)
        if wall <= LONG_TASK_MS:
            continue
        inside: dict[str, float] = {}
        for e in inside_events:
            label = _work_label(e)
            inside[label] = inside.get(label, 0) + e.get("dur", 0) / 1000
        top = sorted(inside.items(), key=lambda kv: -kv[1])[:6]
        long.append(
            {"wall_ms": round(wall, 1), "cpu_ms": round(cpu, 1), "inside_ms": [(k, round(v, 1)) for k, v in top]}
        )
    cpu_long = [t for t in long if t["cpu_ms"] > LONG_TASK_MS]
    return {
        "tasks": len(tasks),
        "task_cpu_ms": round(sum(t.get("tdur", 0) for t in tasks) / 1000, 1),
        "long_tasks": long[:40],
        "wall_long_tasks": len(long),
        "cpu_long_tasks": len(cpu_long),
        "cpu_long_task_max_ms": max((t["cpu_ms"] for t in long), default=0),
        "click_task_cpu_ms": [round(c, 1) for c in clicks],
        "ms_by_work": {k: round(v, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
    }


# ------------------------------------------------------------------------------------------ report

ROWS = [
    # (section, key, label, unit, fmt)
    ("first_render", "ttfb_ms", "first render: server response start (TTFB)", "ms", "{:.0f}"),
    ("first_render", "response_end_ms", "first render: responseEnd", "ms", "{:.0f}"),
    ("first_render", "dom_content_loaded_ms", "first render: DOMContentLoaded end", "ms", "{:.0f}"),
    ("first_render", "load_ms", "first render: load end", "ms", "{:.0f}"),
    ("first_render", "fcp_ms", "first render: first contentful paint", "ms", "{:.0f}"),
    ("first_render", "lcp_ms", "first render: largest contentful paint", "ms", "{:.0f}"),
    ("first_render", "rows_visible_ms", "first render: rows visible (frame after 1st row)", "ms", "{:.0f}"),
    ("first_render", "html_kb", "first render: HTML size", "KiB", "{:.0f}"),
    ("first_render", "dom_nodes", "first render: DOM elements", "", "{:.0f}"),
    ("first_render", "dom_rows", "first render: .row[data-id] in the DOM", "", "{:.0f}"),
    ("first_render", "js_heap_mb", "first render: JS heap used", "MiB", "{:.1f}"),
    ("first_render", "js_heap_after_gc_mb", "first render: JS heap after GC", "MiB", "{:.1f}"),
    ("first_render", "renderer_rss_mb", "first render: renderer process RSS", "MiB", "{:.0f}"),
    ("first_render", "load_long_tasks", "first render: long tasks until load+2 s (wall)", "", "{:.0f}"),
    ("first_render", "load_long_task_max_ms", "first render: longest task (wall)", "ms", "{:.0f}"),
    ("burst_serial", "commit_ms", "burst, serial commits: commands committed in", "ms", "{:.0f}"),
    (
        "burst_serial",
        "applied_after_last_commit_ms",
        "burst, serial commits: final state shown, after the last commit",
        "ms",
        "{:.0f}",
    ),
    ("burst_serial", "window_swaps", "burst, serial commits: row-window replacements", "", "{:.0f}"),
    ("burst_serial", "long_tasks", "burst, serial commits: long tasks > 50 ms (wall)", "", "{:.0f}"),
    ("burst_serial", "long_task_max_ms", "burst, serial commits: longest task (wall)", "ms", "{:.0f}"),
    ("burst_serial", "blocking_ms", "burst, serial commits: total blocking time", "ms", "{:.0f}"),
    ("burst_serial", "cpu_long_tasks", "burst, serial commits: tasks > 50 ms of CPU (trace)", "", "{:.0f}"),
    ("burst_serial", "cpu_long_task_max_ms", "burst, serial commits: longest task's CPU time (trace)", "ms", "{:.0f}"),
    (
        "burst_serial",
        "main_thread_cpu_ms",
        "burst, serial commits: main-thread CPU, whole trace (trace)",
        "ms",
        "{:.0f}",
    ),
    ("burst_serial", "max_dom_rows", "burst, serial commits: max .row[data-id] in the DOM", "", "{:.0f}"),
    ("burst_atomic", "commit_ms", "burst, one transaction: commands committed in", "ms", "{:.0f}"),
    (
        "burst_atomic",
        "applied_after_last_commit_ms",
        "burst, one transaction: final state shown, after the last commit",
        "ms",
        "{:.0f}",
    ),
    ("burst_atomic", "window_swaps", "burst, one transaction: row-window replacements", "", "{:.0f}"),
    ("burst_atomic", "long_tasks", "burst, one transaction: long tasks > 50 ms (wall)", "", "{:.0f}"),
    ("burst_atomic", "long_task_max_ms", "burst, one transaction: longest task (wall)", "ms", "{:.0f}"),
    ("burst_atomic", "blocking_ms", "burst, one transaction: total blocking time", "ms", "{:.0f}"),
    ("burst_atomic", "cpu_long_tasks", "burst, one transaction: tasks > 50 ms of CPU (trace)", "", "{:.0f}"),
    ("burst_atomic", "cpu_long_task_max_ms", "burst, one transaction: longest task's CPU time (trace)", "ms", "{:.0f}"),
    (
        "burst_atomic",
        "main_thread_cpu_ms",
        "burst, one transaction: main-thread CPU, whole trace (trace)",
        "ms",
        "{:.0f}",
    ),
    ("burst_atomic", "max_dom_rows", "burst, one transaction: max .row[data-id] in the DOM", "", "{:.0f}"),
    ("dialog", "open_p50_ms", "assign dialog: click → open with candidates, p50", "ms", "{:.1f}"),
    ("dialog", "open_p95_ms", "assign dialog: click → open with candidates, p95", "ms", "{:.1f}"),
    ("dialog", "painted_p50_ms", "assign dialog: click → next frame, p50", "ms", "{:.1f}"),
    ("dialog", "painted_p95_ms", "assign dialog: click → next frame, p95", "ms", "{:.1f}"),
    ("dialog", "click_cpu_p50_ms", "assign dialog: CPU time of the click task, p50 (trace)", "ms", "{:.1f}"),
    ("dialog", "click_cpu_p95_ms", "assign dialog: CPU time of the click task, p95 (trace)", "ms", "{:.1f}"),
    ("dialog", "long_tasks", "assign dialog: long tasks in 20 opens (wall)", "", "{:.0f}"),
    ("dialog", "cpu_long_tasks", "assign dialog: tasks > 50 ms of CPU (trace)", "", "{:.0f}"),
    ("soak", "minutes", "soak: length", "min", "{:g}"),
    ("soak", "events_per_s", "soak: delivery events per second, achieved", "/s", "{:.1f}"),
    ("soak", "heap_start_mb", "soak: JS heap after GC, start", "MiB", "{:.1f}"),
    ("soak", "heap_end_mb", "soak: JS heap after GC, end", "MiB", "{:.1f}"),
    ("soak", "heap_max_mb", "soak: JS heap after GC, max", "MiB", "{:.1f}"),
    ("soak", "heap_raw_max_mb", "soak: JS heap (no forced GC), max", "MiB", "{:.1f}"),
    ("soak", "renderer_rss_start_mb", "soak: renderer process RSS, start", "MiB", "{:.0f}"),
    ("soak", "renderer_rss_end_mb", "soak: renderer process RSS, end", "MiB", "{:.0f}"),
    ("soak", "renderer_rss_max_mb", "soak: renderer process RSS, max", "MiB", "{:.0f}"),
    ("soak", "max_dom_rows", "soak: max .row[data-id] in the DOM", "", "{:.0f}"),
    ("soak", "end_dom_nodes", "soak: DOM elements at the end", "", "{:.0f}"),
    ("soak", "main_cpu_pct_avg", "soak: renderer main-thread CPU, average", "%", "{:.0f}"),
    ("soak", "long_tasks_per_min", "soak: long tasks per minute (wall)", "/min", "{:.1f}"),
    ("soak", "cpu_long_tasks_per_min", "soak: tasks > 50 ms of CPU per minute (traced interval)", "/min", "{:.1f}"),
    ("soak", "long_task_max_ms", "soak: longest task (wall)", "ms", "{:.0f}"),
    ("soak", "max_event_lag", "soak: max events behind the stream head", "", "{:.0f}"),
]


def table(results: dict) -> str:
    """The figures side by side: board and naive page, or (`--compare-ref`) the board before and now."""
    if "compare" in results:
        left, right = ("before", f"board @ {results['compare']['commit'][:8]}"), ("board", "board (this tree)")
        ratio_label = "this tree / before"
    else:
        left, right = ("board", "board"), ("naive", "naive (all rows)")
        ratio_label = "naive / board"
    lines = [f"| metric | {left[1]} | {right[1]} | {ratio_label} |", "| --- | ---: | ---: | ---: |"]
    for section, key, label, unit, fmt in ROWS:
        b = results.get(left[0], {}).get(section, {}).get(key)
        n = results.get(right[0], {}).get(section, {}).get(key)
        if b is None and n is None:
            continue
        ratio = f"{n / b:.2f}×" if isinstance(b, int | float) and isinstance(n, int | float) and b else "—"
        name = f"{label} ({unit})" if unit else label
        shown = [fmt.format(v) if v is not None else "—" for v in (b, n)]
        lines.append(f"| {name} | {shown[0]} | {shown[1]} | {ratio} |")
    return "\n".join(lines)


def export_tree(ref: str) -> tuple[str, Path]:
    """Export the tracked files of git `ref` into a new temporary folder; return the commit and the folder."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    folder = Path(tempfile.mkdtemp(prefix=f"bros-board-bench-{commit[:8]}-"))
    archive = subprocess.Popen(["git", "archive", "--format=tar", commit], cwd=REPO, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(folder)], stdin=archive.stdout, check=True)
    archive.stdout.close()
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {commit} failed")
    return commit, folder


def code_version() -> dict:
    """The commit measured, local changes under the measured paths, and the board script's hash."""
    import hashlib

    def git(*args) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    override = os.environ.get("BOARD_BENCH_STATIC_OVERRIDE") or ENV.get("BOARD_BENCH_STATIC_OVERRIDE")
    script = Path(override, "deliveries", "board.js") if override else REPO / "static" / "deliveries" / "board.js"
    if not script.exists():
        script = REPO / "static" / "deliveries" / "board.js"
    return {
        "commit": git("rev-parse", "HEAD"),
        "local_changes": git("status", "--porcelain", "--", "static", "deliveries", "riders", "realtime", "templates"),
        "board_js": str(script.relative_to(REPO) if script.is_relative_to(REPO) else script),
        "board_js_sha256": hashlib.sha256(script.read_bytes()).hexdigest()[:16],
        "static_override": override,
    }


def machine() -> dict:
    import playwright

    info = {
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "playwright": getattr(playwright, "__version__", "?"),
        "load_avg_at_start": os.getloadavg(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory_gib"] = round(int(mem) / 2**20, 1)
    return info


# -------------------------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--setup-only", action="store_true", help="(re)build the data set and stop")
    p.add_argument("--skip-setup", action="store_true", help="use the data as it is")
    p.add_argument("--soak-minutes", type=float, default=10.0, help="board soak length (default 10)")
    p.add_argument(
        "--naive-soak-minutes",
        type=float,
        default=3.0,
        help="naive page soak length (default 3: it saturates the server within seconds; 0 skips it)",
    )
    p.add_argument("--rate", type=float, default=20.0, help="soak commands (= delivery events) per second")
    p.add_argument("--sample-seconds", type=float, default=30.0, help="soak sampling interval")
    p.add_argument("--burst", type=int, default=100, help="commands in the burst")
    p.add_argument("--dialog-trials", type=int, default=20)
    p.add_argument("--loads", type=int, default=3, help="measured page loads per page (after one warm-up)")
    p.add_argument("--gps-interval", type=float, default=10.0, help="seconds between two fixes of one rider")
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the profiled board burst/dialog")
    p.add_argument("--first-render-only", action="store_true", help="measure the first renders, then stop")
    p.add_argument("--only", choices=["board", "naive", "before"], default=None, help="measure one page only")
    p.add_argument(
        "--compare-ref",
        metavar="REF",
        default=None,
        help="measure the board served by the code at git REF ('before', its own server) against this tree's\n"
        "board instead of the naive page; REF must have the same models and migrations as this tree",
    )
    p.add_argument(
        "--static-override",
        type=Path,
        default=None,
        help="a folder whose files win over static/ (e.g. DIR/deliveries/board.js): try a page change",
    )
    args = p.parse_args(argv)
    if args.static_override:
        if not args.static_override.is_dir():
            p.error(f"--static-override {args.static_override}: no such folder")
        ENV["BOARD_BENCH_STATIC_OVERRIDE"] = str(args.static_override.resolve())
    if args.only == "before" and not args.compare_ref:
        p.error("--only before needs --compare-ref")
    if args.only == "naive" and args.compare_ref:
        p.error("--compare-ref compares boards: --only naive does not go with it")
    for name in ("soak_minutes", "naive_soak_minutes"):
        if not 0 <= getattr(args, name) <= 60:
            p.error(f"--{name.replace('_', '-')} must be between 0 and 60")
    if not 0 < args.rate <= 200:
        p.error("--rate must be in (0, 200]")
    return args


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM too: the `finally` below stops everything this started


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_path = RESULTS / f"board-{stamp}.json"
    args.stamp = stamp
    results: dict = {
        "started": stamp,
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": machine(),
        "code": code_version(),
    }
    log(f"measuring {results['code']}")

    if not args.skip_setup:
        results["setup"] = setup_data()
    if args.setup_only:
        return 0

    from playwright.sync_api import sync_playwright

    center = Center.objects.get(code=CENTER)
    rider_ids = list(Rider.objects.filter(center=center, on_duty=True).order_by("pk").values_list("pk", flat=True))
    results["data"] = {
        "deliveries": Delivery.objects.filter(center=center).count(),
        "riders_on_duty": len(rider_ids),
    }
    connections.close_all()  # from here on the ORM runs in the driver thread only

    server = Server(RESULTS / f"board-{stamp}-server.log")
    before, before_root = None, None
    gps = Gps(center, rider_ids, interval=args.gps_interval)
    driver = Driver(CENTER, rider_ids)
    pages = [args.only] if args.only else ["before", "board"] if args.compare_ref else ["board", "naive"]
    try:
        if args.compare_ref:
            commit, before_root = export_tree(args.compare_ref)
            script = before_root / "static" / "deliveries" / "board.js"
            results["compare"] = {
                "ref": args.compare_ref,
                "commit": commit,
                "root": str(before_root),
                "board_js_sha256": hashlib.sha256(script.read_bytes()).hexdigest()[:16] if script.exists() else None,
            }
            log(f"before: {args.compare_ref} = {commit}, exported to {before_root}")
            # The same database, Redis and settings; the static override applies to this tree only.
            env = {k: v for k, v in {**os.environ, **ENV}.items() if k != "BOARD_BENCH_STATIC_OVERRIDE"}
            before = Server(RESULTS / f"board-{stamp}-server-before.log", root=before_root, env=env)
        server.start()
        log(f"server on {server.base} (pid {server.proc.pid}); data {results['data']}")
        if before is not None:
            before.start()
            log(f"before: server on {before.base} (pid {before.proc.pid})")
        gps.start()
        driver.call(driver.load_pools)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(viewport=VIEWPORT)
                context.add_init_script(INIT_SCRIPT)
                login = context.new_page()
                login.goto(f"{server.base}/accounts/login/")
                login.fill("#id_username", DISPATCHER)
                login.fill("#id_password", PASSWORD)
                login.click("form [type=submit]")
                login.wait_for_url(f"**/dispatch/{CENTER}/", timeout=PAGE_TIMEOUT_MS)
                login.close()
                # The session cookie is the host's, whatever the port: it logs the page in on `before` too.
                bench = Bench(args, server, driver, browser, context, before=before)
                for which, first_render in bench.first_renders(pages).items():
                    results.setdefault(which, {})["first_render"] = first_render
                if "naive" in pages:
                    server.wait_idle()
                if args.first_render_only:
                    pages = []
                for mode in ("serial", "atomic"):
                    for which in pages:
                        results[which][f"burst_{mode}"] = bench.burst(which, mode=mode)
                for which in pages:
                    results[which]["dialog"] = bench.dialog(which)
                    if which == "naive":
                        server.wait_idle()
                if args.profile and "board" in pages:
                    results["board"]["profiled"] = {
                        "burst_serial": bench.burst("board", mode="serial", profile=True),
                        "burst_atomic": bench.burst("board", mode="atomic", profile=True),
                        "dialog": bench.dialog("board", profile=True),
                    }
                    print_profile(results["board"]["profiled"])
                for which in pages:
                    minutes = args.naive_soak_minutes if which == "naive" else args.soak_minutes
                    if minutes > 0:
                        driver.call(driver.load_pools)
                        log(f"{which}: soak for {minutes:g} min at {args.rate:g} events/s")
                        results[which]["soak"] = bench.soak(which, minutes)
                context.close()
            finally:
                browser.close()
    except KeyboardInterrupt:
        log("interrupted")
        results["interrupted"] = True
    finally:
        gps.close()
        driver.close()
        server.stop()
        if before is not None:
            before.stop()
        if before_root is not None:
            shutil.rmtree(before_root, ignore_errors=True)
        results["driver"] = {"failed_commands": driver.failed, "errors": driver.errors, "gps_fixes": gps.sent}
        results["finished"] = time.strftime("%Y%m%d-%H%M%S")
        results["machine"]["load_avg_at_end"] = os.getloadavg()
        out_path.write_text(json.dumps(results, indent=1, default=str))
        log(f"results: {out_path}")
    print()
    print(table(results))
    return 0


def print_profile(profiled: dict) -> None:
    for phase, result in profiled.items():
        data = result.get("profile") or {}
        print(f"\nBoard, {phase}, under the CPU profiler (inclusive ms, top 12):")
        for name, ms in data.get("total_ms", [])[:12]:
            print(f"  {ms:8.1f}  {name}")
        print(f"  self, top 8: {data.get('self_ms', [])[:8]}")
        print(f"  (program) {data.get('program_ms')} ms, GC {data.get('gc_ms')} ms")
        trace = result.get("trace") or {}
        print(f"  trace, main thread ms by work: {trace.get('ms_by_work')}")
        for task in trace.get("long_tasks", [])[:5]:
            print(f"  long task {task['wall_ms']} ms wall / {task['cpu_ms']} ms CPU: {task['inside_ms']}")


if __name__ == "__main__":
    sys.exit(main())
