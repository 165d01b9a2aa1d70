"""Run the demo simulator (deliveries.simulation) tick by tick until stopped or a duration passes."""

from __future__ import annotations

import logging
import random
import signal
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, close_old_connections, connection

from deliveries.simulation import Simulation

logger = logging.getLogger("deliveries.simulation")

SUMMARY_EVERY = 10.0  # seconds
MAX_FAILED_TICKS = 30  # in a row: the database is gone, not hiccuping


class Command(BaseCommand):
    help = (
        "Drive a live demo through the services: take orders, assign them, move riders, pick up and "
        "deliver. Stops cleanly on Ctrl-C / SIGTERM or after --duration."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--orders-per-minute", type=float, default=6.0, help="New orders per center per minute (default 6)."
        )
        parser.add_argument(
            "--centers", default="", help="Comma-separated center codes, e.g. gangnam,mapo (default all)."
        )
        parser.add_argument("--tick", type=float, default=1.0, help="Seconds between ticks (default 1.0).")
        parser.add_argument(
            "--duration", type=float, default=None, help="Stop after this many seconds (default never)."
        )
        parser.add_argument("--seed", type=int, default=None, help="Seed the random choices, for a repeatable run.")
        parser.add_argument(
            "--speedup", type=float, default=1.0, help="How much faster than real time deliveries advance (default 1)."
        )
        parser.add_argument("--force", action="store_true", help="Run even with DEBUG off (it creates fake orders).")

    def handle(self, *args, **options):
        if not settings.DEBUG and not options["force"]:
            raise CommandError("DEBUG is off: the simulator would put fake orders into this database. Use --force.")
        tick, duration = options["tick"], options["duration"]
        if tick <= 0 or options["speedup"] <= 0 or options["orders_per_minute"] < 0:
            raise CommandError("--tick and --speedup must be positive, --orders-per-minute not negative.")
        centers = [code.strip() for code in options["centers"].split(",") if code.strip()]
        try:
            simulation = Simulation(
                centers=centers or None,
                orders_per_minute=options["orders_per_minute"],
                speedup=options["speedup"],
                rng=random.Random(options["seed"]),
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        codes = ", ".join(c.code for c in simulation.centers.values()) or "none"
        self.stdout.write(
            f"Simulating {codes}: {options['orders_per_minute']:g} orders/min per center, "
            f"tick {tick:g} s, speedup {options['speedup']:g}x" + (f", for {duration:g} s" if duration else "")
        )

        stop = threading.Event()
        previous_handlers = self._catch_signals(stop)
        started = time.monotonic()
        deadline = started + duration if duration else None
        next_tick = started
        last_summary, last_summary_at = simulation.tally.copy(), started
        step_seconds, steps, failed = 0.0, 0, 0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                try:
                    simulation.step(now)
                    failed = 0
                except DatabaseError:
                    failed += 1
                    logger.exception("simulation tick failed (%d in a row)", failed)
                    if failed >= MAX_FAILED_TICKS:
                        raise
                    if not connection.in_atomic_block:
                        close_old_connections()  # reconnect next tick if the connection broke
                steps += 1
                step_seconds += time.monotonic() - now
                if time.monotonic() - last_summary_at >= SUMMARY_EVERY:
                    self._summary(simulation, last_summary, last_summary_at, step_seconds / steps)
                    last_summary, last_summary_at = simulation.tally.copy(), time.monotonic()
                next_tick += tick
                wait = next_tick - time.monotonic()
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                if wait > 0:
                    stop.wait(wait)
                else:
                    next_tick = time.monotonic()  # running behind: don't burst to catch up
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
        elapsed = time.monotonic() - started
        tally = simulation.tally
        self.stdout.write(
            f"Simulation stopped after {elapsed:.1f} s and {steps} ticks: {tally.summary()}; "
            f"{tally.commands / max(elapsed, 1e-9):.1f} commands/s, "
            f"{tally.positions / max(elapsed, 1e-9):.1f} positions/s, "
            f"{1000 * step_seconds / max(steps, 1):.0f} ms per tick"
        )

    def _summary(self, simulation: Simulation, since, since_at: float, step_avg: float) -> None:
        delta = simulation.tally.minus(since)
        seconds = max(time.monotonic() - since_at, 1e-9)
        self.stdout.write(
            f"[{simulation.sim_time:.0f} s simulated] {simulation.tally.summary()}; last {seconds:.0f} s: "
            f"{delta.commands / seconds:.1f} commands/s, {delta.positions / seconds:.1f} positions/s, "
            f"{1000 * step_avg:.0f} ms per tick"
        )

    def _catch_signals(self, stop: threading.Event) -> dict:
        """Turn SIGINT/SIGTERM into "finish this tick, then stop"; return the handlers to restore."""
        if threading.current_thread() is not threading.main_thread():
            return {}  # signal handlers can only be set from the main thread

        def request_stop(signum, frame):
            logger.info("%s received: stopping after this tick", signal.Signals(signum).name)
            stop.set()

        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.getsignal(signum)
            signal.signal(signum, request_stop)
        return previous
