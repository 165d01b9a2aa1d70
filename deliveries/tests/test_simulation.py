"""The demo simulator drives deliveries through the real services and survives everyone else's actions."""

from __future__ import annotations

import os
import random
import re
import signal
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from deliveries import services, simulation
from deliveries.models import Delivery, Order, TimelineEntry
from deliveries.simulation import Simulation
from realtime.models import Event
from riders import positions
from riders import services as rider_services
from riders.models import Rider
from riders.positions import current_positions

DELIVERY_COMMANDS = [
    "create_order",
    "cancel_order",
    "assign_delivery",
    "unassign_delivery",
    "pick_up_delivery",
    "deliver_delivery",
]


def make_simulation(seed: int = 7, **kwargs) -> Simulation:
    options = {"centers": ["gangnam"], "orders_per_minute": 30.0, "speedup": 30.0} | kwargs
    return Simulation(rng=random.Random(seed), **options)


def run(sim: Simulation, steps: int, *, start: int = 0, until=None) -> int:
    """Step once per simulated real second; stop early when `until()` holds. Return the next tick."""
    for tick in range(start, start + steps):
        sim.step(float(tick))
        if until is not None and until():
            return tick + 1
    return start + steps


def test_simulation_start_puts_three_quarters_on_duty(demo):
    """The first step puts 15 of a center's 20 riders on duty, and only in the simulated centers."""
    sim = make_simulation(orders_per_minute=0)

    sim.step(0.0)

    assert Rider.objects.filter(center__code="gangnam", on_duty=True).count() == 15
    assert not Rider.objects.filter(center__code="mapo", on_duty=True).exists()
    assert sim.tally.shift_changes == 15


def test_simulation_start_counts_riders_already_on_duty(demo):
    """Riders already on duty count towards the three quarters; nobody is switched twice."""
    for number in range(1, 6):
        rider_services.set_rider_duty(actor=None, rider_id=demo.rider(number=number).pk, on_duty=True)
    sim = make_simulation(orders_per_minute=0)

    sim.step(0.0)

    assert Rider.objects.filter(center__code="gangnam", on_duty=True).count() == 15
    assert sim.tally.shift_changes == 10
    assert sim.tally.refused == 0


def test_simulation_steps_take_orders_through_delivery(demo):
    """Stepping with a seed and a large speedup creates, assigns, moves, picks up and delivers."""
    riders_before = {r.pk: (r.last_lat, r.last_lng) for r in Rider.objects.filter(center__code="gangnam")}
    sim = make_simulation()

    run(sim, 240, until=lambda: Delivery.objects.filter(status=Delivery.Status.DELIVERED).count() >= 3)

    orders = Order.objects.filter(center__code="gangnam")
    assert orders.count() == sim.tally.orders_created > 0
    assert Event.objects.filter(name="order.created").count() == sim.tally.orders_created
    assert Event.objects.filter(name="delivery.assigned").exists()
    assert Delivery.objects.filter(status=Delivery.Status.DELIVERED).count() >= 3
    assert TimelineEntry.objects.filter(action="delivered", source="system").exists()
    live = {p["rider"]: (p["lat"], p["lng"]) for p in current_positions("gangnam")}
    on_duty = Rider.objects.filter(center__code="gangnam", on_duty=True).values_list("pk", flat=True)
    moved = [pk for pk in on_duty if pk in live and live[pk] != riders_before[pk]]
    assert len(moved) == 15
    order = orders.first()
    assert order.customer_phone.startswith("010-") and len(order.customer_phone) == 13
    assert 1 <= len(order.items) <= 3 and order.lat is not None and order.address.endswith(", Seoul")


def test_simulation_loads_stay_consistent(demo):
    """After many ticks each rider's load equals their active deliveries and stays within the cap."""
    sim = make_simulation(orders_per_minute=120.0)

    run(sim, 60)

    assert sim.tally.delivered > 0
    assert Rider.objects.filter(center__code="gangnam", load=simulation.MAX_LOAD).exists()
    for rider in Rider.objects.filter(center__code="gangnam"):
        active = Delivery.objects.filter(rider=rider, status__in=Delivery.ACTIVE_STATUSES).count()
        assert rider.load == active <= simulation.MAX_LOAD


def test_simulation_step_queries_outside_services_bounded(demo, monkeypatch):
    """Apart from the service calls, a tick makes exactly two queries: riders and open deliveries."""
    outside_services = []
    with CaptureQueriesContext(connection) as ctx:
        inside = [0]

        def counted(command):
            def wrapper(**kwargs):
                before = len(ctx.captured_queries)
                try:
                    return command(**kwargs)
                finally:
                    inside[0] += len(ctx.captured_queries) - before

            wrapper.__name__ = command.__name__
            return wrapper

        for name in DELIVERY_COMMANDS:
            monkeypatch.setattr(services, name, counted(getattr(services, name)))
        monkeypatch.setattr(rider_services, "set_rider_duty", counted(rider_services.set_rider_duty))
        monkeypatch.setattr(positions, "record_fix", counted(positions.record_fix))
        sim = make_simulation(orders_per_minute=60.0)
        for tick in range(60):
            before, inside[0] = len(ctx.captured_queries), 0
            sim.step(float(tick))
            outside_services.append(len(ctx.captured_queries) - before - inside[0])

    assert sim.tally.delivered > 0
    assert outside_services == [2] * 60


def test_simulation_pick_up_refused_after_cancel_does_not_crash(demo, monkeypatch):
    """A customer cancelling just before the rider's pick-up makes the pick-up a logged refusal."""
    callcenter = demo.user("callcenter")
    original = services.pick_up_delivery
    raced = []

    def cancel_first(**kwargs):
        if not raced:
            delivery = Delivery.objects.get(pk=kwargs["delivery_id"])
            services.cancel_order(actor=callcenter, order_id=delivery.order_id, reason="Changed my mind")
            raced.append(delivery.pk)
        return original(**kwargs)

    monkeypatch.setattr(services, "pick_up_delivery", cancel_first)
    sim = make_simulation()

    run(sim, 240, until=lambda: sim.tally.delivered >= 2)

    assert raced and sim.tally.refused >= 1
    assert Delivery.objects.get(pk=raced[0]).status == Delivery.Status.CANCELLED
    assert sim.tally.delivered >= 2


def test_simulation_stale_assignment_is_refused(demo, monkeypatch):
    """A dispatcher assigning first makes the simulator's assignment stale; the dispatcher's stands."""
    dispatcher = demo.user("dispatch-gangnam")
    original = services.assign_delivery
    raced = {}

    def dispatcher_first(**kwargs):
        if not raced:
            rider = Rider.objects.filter(center__code="gangnam", on_duty=True).exclude(pk=kwargs["rider_id"]).first()
            original(actor=dispatcher, delivery_id=kwargs["delivery_id"], rider_id=rider.pk)
            raced[kwargs["delivery_id"]] = rider.pk
        return original(**kwargs)

    monkeypatch.setattr(services, "assign_delivery", dispatcher_first)
    sim = make_simulation()

    run(sim, 60, until=lambda: sim.tally.assigned >= 2)

    ((delivery_id, rider_id),) = raced.items()
    assert sim.tally.refused == 1
    assert Delivery.objects.get(pk=delivery_id).rider_id == rider_id
    assert sim.tally.assigned >= 2


def test_simulation_cancel_between_ticks_frees_the_rider(demo):
    """An assigned delivery cancelled by the call center between ticks is dropped without a refusal."""
    sim = make_simulation()
    tick = run(sim, 60, until=lambda: Delivery.objects.filter(status=Delivery.Status.ASSIGNED).exists())
    delivery = Delivery.objects.filter(status=Delivery.Status.ASSIGNED).first()
    services.cancel_order(actor=demo.user("callcenter"), order_id=delivery.order_id, reason="Wrong address")

    run(sim, 30, start=tick)

    assert sim.tally.refused == 0
    assert not Delivery.objects.filter(pk=delivery.pk).exclude(status=Delivery.Status.CANCELLED).exists()
    rider = Rider.objects.get(pk=delivery.rider_id)
    assert rider.load == Delivery.objects.filter(rider=rider, status__in=Delivery.ACTIVE_STATUSES).count()


def test_simulation_customers_cancel_some_orders(demo, monkeypatch):
    """Planned customer cancellations go through cancel_order with the customer's reason."""
    monkeypatch.setattr(simulation, "CANCEL_SHARE", 0.5)
    monkeypatch.setattr(simulation, "CANCEL_AFTER", (1.0, 30.0))
    sim = make_simulation()

    run(sim, 30)

    assert sim.tally.cancelled > 0
    cancelled = Order.objects.filter(status=Order.Status.CANCELLED)
    assert cancelled.count() == sim.tally.cancelled
    assert set(cancelled.values_list("cancel_reason", flat=True)) == {"Customer cancelled"}


def test_simulation_dispatch_sometimes_takes_back_assignments(demo, monkeypatch):
    """Planned revocations unassign or reassign through the services, and the work still gets done."""
    monkeypatch.setattr(simulation, "REVOKE_SHARE", 1.0)
    monkeypatch.setattr(simulation, "REVOKE_AFTER", (1.0, 5.0))
    sim = make_simulation()

    run(sim, 30)

    assert sim.tally.unassigned > 0 and sim.tally.reassigned > 0
    assert TimelineEntry.objects.filter(action="unassigned").count() == sim.tally.unassigned
    assert TimelineEntry.objects.filter(action="reassigned").count() == sim.tally.reassigned


def test_simulation_shift_changes_keep_about_three_quarters(demo, monkeypatch):
    """Shift changes only take idle riders off duty and keep the on-duty count around 15 of 20."""
    monkeypatch.setattr(simulation, "SHIFT_CHANGES_PER_MINUTE", 600.0)
    sim = make_simulation()

    for tick in range(40):
        sim.step(float(tick))
        on_duty = Rider.objects.filter(center__code="gangnam", on_duty=True).count()
        assert 14 <= on_duty <= 16

    assert sim.tally.shift_changes > 15 + 20


def test_simulation_holds_back_orders_past_the_backlog(demo, monkeypatch):
    """With nobody dispatching, new orders stop at two waiting per on-duty rider."""
    monkeypatch.setattr(simulation, "ASSIGN_AFTER", (1e9, 1e9))
    sim = make_simulation(orders_per_minute=600.0)

    run(sim, 10)

    assert Delivery.objects.filter(status=Delivery.Status.WAITING).count() == 30 == sim.tally.orders_created
    assert sim.tally.orders_held_back > 0


def test_simulation_restart_continues_open_deliveries(demo):
    """A new simulator picks up where the last left off and delivers what was already picked up."""
    first = make_simulation(seed=3)
    run(first, 240, until=lambda: Delivery.objects.filter(status=Delivery.Status.PICKED_UP).exists())
    carried = Delivery.objects.filter(status=Delivery.Status.PICKED_UP).first()

    second = make_simulation(seed=4, orders_per_minute=0)
    run(second, 240, until=lambda: not Delivery.objects.filter(status__in=Delivery.OPEN_STATUSES).exists())

    carried.refresh_from_db()
    assert carried.status == Delivery.Status.DELIVERED
    assert second.tally.delivered > 0 and second.tally.refused == 0
    assert not Delivery.objects.filter(status__in=Delivery.OPEN_STATUSES).exists()


def test_simulation_seed_repeats_orders(demo):
    """The same seed on the same data takes the same orders."""

    def first_orders():
        with transaction.atomic():
            run(make_simulation(seed=11), 20)
            orders = list(
                Order.objects.order_by("pk").values_list(
                    "shop_id", "customer_name", "customer_phone", "address", "lat", "lng", "items", "note"
                )
            )
            transaction.set_rollback(True)
        return orders

    first = first_orders()

    assert len(first) >= 3
    assert first_orders() == first


def test_simulation_unknown_center_refused(demo):
    """Naming a center that does not exist is an error, not an empty demo."""
    with pytest.raises(ValueError, match="atlantis"):
        Simulation(centers=["gangnam", "atlantis"])


def test_simulate_command_runs_for_duration_and_prints_summary(demo, settings):
    """The command runs for --duration seconds, then prints its summary line."""
    settings.DEBUG = True
    out = StringIO()

    call_command(
        "simulate",
        "--duration",
        "2",
        "--tick",
        "0.2",
        "--speedup",
        "50",
        "--seed",
        "1",
        "--centers",
        "gangnam",
        stdout=out,
    )

    summary = out.getvalue().strip().splitlines()[-1]
    assert re.match(r"Simulation stopped after [23]\.\d s and \d+ ticks: ", summary)
    for part in ("orders created", "assigned", "picked up", "delivered", "cancelled", "commands/s"):
        assert part in summary
    assert Rider.objects.filter(center__code="gangnam", on_duty=True).count() == 15


def test_simulate_command_stops_on_sigterm(demo, settings, monkeypatch):
    """SIGTERM finishes the current tick, prints the summary and restores the previous handler."""
    settings.DEBUG = True
    steps = []
    original_step = Simulation.step

    def step_then_signal(self, now):
        original_step(self, now)
        steps.append(now)
        if len(steps) == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Simulation, "step", step_then_signal)
    handler_before = signal.getsignal(signal.SIGTERM)
    out = StringIO()

    call_command("simulate", "--tick", "0.05", "--centers", "gangnam", stdout=out)

    assert len(steps) == 3
    assert "Simulation stopped after" in out.getvalue()
    assert signal.getsignal(signal.SIGTERM) is handler_before


def test_simulate_command_refuses_without_debug(demo, settings):
    """With DEBUG off the command refuses to put fake orders into the database unless forced."""
    settings.DEBUG = False

    with pytest.raises(CommandError, match="DEBUG is off"):
        call_command("simulate", "--duration", "0.1")


def test_simulate_command_rejects_unknown_center(demo, settings):
    """An unknown --centers code is a command error."""
    settings.DEBUG = True

    with pytest.raises(CommandError, match="atlantis"):
        call_command("simulate", "--duration", "0.1", "--centers", "atlantis")
