"""The demo simulator: orders, dispatching, rider movement and hand-overs, all through the services.

`Simulation.step(now)` advances the demo by one tick. It reads the state of its centers with two
queries (riders, open deliveries) and changes it only through the domain services, as a user or
a phone would (conventions §2), so every change gets its timeline, version and events. The
database is the truth about who carries what; the simulator keeps in memory only what a real
world would not tell the server: where each rider really is and where they are heading, when a
customer will cancel, when dispatch will change its mind. A restarted simulator rebuilds that from
the riders' last positions and carries on with the open deliveries.

Two clocks: `now` is real (monotonic) seconds, which paces order arrivals and shift changes;
simulated time runs `speedup` times faster and paces movement, assignment delays and plans.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field, fields

from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.utils import timezone

from core.exceptions import CommandRefused
from core.models import Center
from deliveries import services
from deliveries.models import Delivery, Shop
from riders import positions
from riders import services as rider_services
from riders.models import Rider

logger = logging.getLogger(__name__)

Status = Delivery.Status
Point = tuple[float, float]

ON_DUTY_SHARE = 0.75
MAX_LOAD = 3
ASSIGN_AFTER = (3.0, 15.0)  # simulated seconds a new delivery waits before the "dispatcher" acts
CANCEL_SHARE = 0.03
CANCEL_AFTER = (20.0, 600.0)
REVOKE_SHARE = 0.02
REVOKE_AFTER = (5.0, 60.0)
SHIFT_CHANGES_PER_MINUTE = 0.5  # per center, real time
CUSTOMER_RADIUS_M = 2000.0
WANDER_RADIUS_M = 1500.0
WANDER_KMH = (6.0, 12.0)
WANDER_PAUSE = (10.0, 60.0)
OVERDUE_CARRIED = 600.0  # simulated seconds after which a picked-up delivery goes before nearer stops
MAX_ORDERS_PER_TICK = 50  # after a long stall, don't make up for every missed arrival at once
# Demo riders manage about 2 deliveries a minute per center at speedup 1, fewer than the default
# 6 orders: past this many waiting deliveries per on-duty rider, arrivals are held back, so an
# all-day demo stays saturated but bounded instead of piling up thousands of waiting orders.
MAX_WAITING_PER_RIDER = 2.0
ARRIVED_M = 1.0
VEHICLE_KMH = {
    Rider.Vehicle.MOTORCYCLE: (25.0, 35.0),
    Rider.Vehicle.CAR: (20.0, 30.0),
    Rider.Vehicle.BICYCLE: (14.0, 20.0),
    Rider.Vehicle.WALK: (4.0, 6.0),
}
M_PER_DEG_LAT = 111_320.0

FAMILY_NAMES = ["Kim", "Lee", "Park", "Choi", "Jung", "Kang", "Cho", "Yoon", "Jang", "Lim", "Han", "Oh", "Seo", "Shin"]
GIVEN_NAMES = [
    "Jiwoo",
    "Seoyeon",
    "Minseo",
    "Hayoon",
    "Jiyoon",
    "Seoah",
    "Eunji",
    "Sujin",
    "Yuna",
    "Dahye",
    "Minjun",
    "Seojun",
    "Jihoon",
    "Hyunwoo",
    "Donghyun",
    "Taeyang",
    "Junho",
    "Sungmin",
    "Woojin",
    "Youngho",
]
STREETS = {
    "gangnam": ["Teheran-ro", "Gangnam-daero", "Nonhyeon-ro", "Dosan-daero", "Seolleung-ro", "Eonju-ro", "Yeoksam-ro"],
    "mapo": ["Yanghwa-ro", "World Cup-ro", "Donggyo-ro", "Mapo-daero", "Seongmisan-ro", "Wausan-ro", "Tojeong-ro"],
    "songpa": ["Olympic-ro", "Songpa-daero", "Baekjegobun-ro", "Jamsil-ro", "Ogeum-ro", "Garak-ro", "Yangjae-daero"],
}
DEFAULT_STREETS = ["Jong-ro", "Sejong-daero", "Eulji-ro", "Toegye-ro", "Hangang-daero"]
# A shop's menu comes from the first keyword found in its name.
MENUS = {
    "chicken": ["Fried chicken", "Yangnyeom chicken", "Soy garlic chicken", "Chicken radish", "Cola 1.25 L"],
    "pizza": ["Bulgogi pizza", "Pepperoni pizza", "Potato pizza", "Cheese sticks", "Sprite 1.5 L"],
    "bibimbap": ["Dolsot bibimbap", "Bulgogi bibimbap", "Doenjang jjigae", "Gyeran-jjim"],
    "tteokbokki": ["Tteokbokki", "Rose tteokbokki", "Twigim set", "Sundae", "Eomuk"],
    "jjajang": ["Jjajangmyeon", "Jjamppong", "Tangsuyuk", "Fried rice", "Gunmandu"],
    "burger": ["Bulgogi burger", "Cheeseburger", "Chicken burger", "French fries", "Milkshake"],
    "dakgalbi": ["Dakgalbi", "Cheese dakgalbi", "Makguksu", "Fried rice add-on"],
    "sushi": ["Salmon sushi set", "Chef's sushi set", "Udon", "California roll"],
    "kimbap": ["Tuna kimbap", "Cheese kimbap", "Ramyeon", "Rabokki"],
    "pho": ["Beef pho", "Bun cha", "Fried spring rolls", "Banh mi"],
    "jokbal": ["Jokbal (medium)", "Jokbal (large)", "Makguksu", "Bossam side"],
    "noodles": ["Kalguksu", "Naengmyeon", "Janchi guksu", "Mandu"],
    "bossam": ["Bossam (medium)", "Bossam (large)", "Kimchi jeon", "Makguksu"],
    "hoe": ["Flatfish hoe", "Salmon hoe", "Maeuntang", "Hoe-deopbap"],
    "sundae": ["Sundae", "Sundae-guk", "Tteokbokki", "Twigim"],
    "salad": ["Chicken salad", "Poke bowl", "Grain bowl", "Cold brew"],
}
DEFAULT_MENU = ["Kimchi jjigae", "Bulgogi set", "Ramyeon", "Kimbap"]
NOTES = [
    "Please leave it at the door.",
    "Call me when you arrive.",
    "Don't ring the bell, the baby is sleeping.",
    "Extra spicy, please.",
    "Not too spicy, please.",
    "No pickled radish, please.",
    "Building entrance code #1234.",
    "Extra chopsticks, please.",
    "Please knock, the bell is broken.",
]


@dataclass
class Tally:
    """What the simulator did; `commands` counts every state-changing service call, refused or not."""

    orders_created: int = 0
    orders_held_back: int = 0
    assigned: int = 0
    picked_up: int = 0
    delivered: int = 0
    cancelled: int = 0
    unassigned: int = 0
    reassigned: int = 0
    shift_changes: int = 0
    positions: int = 0
    refused: int = 0
    commands: int = 0

    def copy(self) -> Tally:
        return Tally(**{f.name: getattr(self, f.name) for f in fields(self)})

    def minus(self, other: Tally) -> Tally:
        return Tally(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def summary(self) -> str:
        return (
            f"orders created {self.orders_created}, assigned {self.assigned}, picked up {self.picked_up}, "
            f"delivered {self.delivered}, cancelled {self.cancelled} "
            f"(held back {self.orders_held_back}, unassigned {self.unassigned}, reassigned {self.reassigned}, "
            f"shift changes {self.shift_changes}, "
            f"positions {self.positions}, refused {self.refused})"
        )


@dataclass
class Stop:
    """Where a rider is heading and why: a shop to pick up at, a customer, or a wander point."""

    kind: str  # "shop" | "customer" | "wander"
    point: Point
    key: int = 0  # shop id for "shop", delivery id for "customer"


@dataclass
class RiderState:
    """A rider's true position and route, known only to the simulator (the server sees GPS fixes)."""

    lat: float
    lng: float
    kmh: float
    stop: Stop | None = None
    route: list[Point] = field(default_factory=list)
    pause_until: float = 0.0


@dataclass
class Revocation:
    """Dispatch changing its mind about an assignment, at a simulated time."""

    at: float
    kind: str  # "unassign" | "reassign"
    rider_id: int


def distance_m(a: Point, b: Point) -> float:
    """Equirectangular distance in metres: plenty for a city."""
    dlat = (b[0] - a[0]) * M_PER_DEG_LAT
    dlng = (b[1] - a[1]) * M_PER_DEG_LAT * math.cos(math.radians((a[0] + b[0]) / 2))
    return math.hypot(dlat, dlng)


def offset(origin: Point, north_m: float, east_m: float) -> Point:
    return (
        origin[0] + north_m / M_PER_DEG_LAT,
        origin[1] + east_m / (M_PER_DEG_LAT * math.cos(math.radians(origin[0]))),
    )


def bearing(a: Point, b: Point) -> float:
    """Compass heading from a to b in degrees (0 = north)."""
    north = (b[0] - a[0]) * M_PER_DEG_LAT
    east = (b[1] - a[1]) * M_PER_DEG_LAT * math.cos(math.radians(a[0]))
    return math.degrees(math.atan2(east, north)) % 360


class Simulation:
    """Drive a live demo of some centers; call `step(now)` once per tick."""

    def __init__(
        self,
        *,
        centers: list[str] | None = None,
        orders_per_minute: float = 6.0,
        speedup: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        if orders_per_minute < 0 or speedup <= 0:
            raise ValueError("orders_per_minute must be >= 0 and speedup > 0")
        queryset = Center.objects.order_by("code")
        if centers:
            queryset = queryset.filter(code__in=centers)
        self.centers = {center.pk: center for center in queryset}
        unknown = set(centers or ()) - {c.code for c in self.centers.values()}
        if unknown:
            raise ValueError(f"Unknown center(s): {', '.join(sorted(unknown))}")
        shops = Shop.objects.filter(center__in=list(self.centers), is_active=True).order_by("pk")
        self.shops_by_center: dict[int, list[Shop]] = {pk: [] for pk in self.centers}
        for shop in shops:
            self.shops_by_center[shop.center_id].append(shop)
        self.orders_per_minute = orders_per_minute
        self.speedup = speedup
        self.rng = rng or random.Random()
        self.tally = Tally()
        self.sim_time = 0.0
        self._last_now: float | None = None
        self._next_order_at: dict[int, float] = {}
        self._riders: dict[int, RiderState] = {}
        self._assign_due: dict[int, float] = {}  # waiting delivery id -> simulated time
        self._carried_since: dict[int, float] = {}  # picked-up delivery id -> simulated time
        self._cancellations: dict[int, float] = {}  # delivery id -> simulated time the customer cancels
        self._revocations: dict[int, Revocation] = {}  # delivery id -> dispatch's change of mind
        self._customer_points: dict[int, Point] = {}  # for orders taken without coordinates

    # ------------------------------------------------------------------ the tick

    def step(self, now: float) -> None:
        """Advance the demo to `now` (real seconds, monotonic): move, hand over, dispatch, take orders."""
        first = self._last_now is None
        real_dt = 0.0 if first else max(0.0, now - self._last_now)
        self._last_now = now
        sim_dt = real_dt * self.speedup
        self.sim_time += sim_dt

        center_ids = list(self.centers)
        riders = list(Rider.objects.filter(center_id__in=center_ids).order_by("pk"))
        open_deliveries = list(
            Delivery.objects.filter(center_id__in=center_ids, status__in=Delivery.OPEN_STATUSES)
            .select_related("order", "shop")
            .order_by("pk")
        )
        self._forget_closed({d.pk for d in open_deliveries})
        for center_id in self.centers:
            center_riders = {r.pk: r for r in riders if r.center_id == center_id}
            deliveries = {d.pk: d for d in open_deliveries if d.center_id == center_id}
            if first:
                self._start_shifts(center_id, center_riders)
                self._next_order_at[center_id] = now + self._order_gap()
            self._carry_out_plans(center_riders, deliveries)
            self._move_riders(center_riders, deliveries, sim_dt)
            self._dispatch(center_riders, deliveries)
            self._change_shift(center_riders, real_dt)
            self._take_orders(center_id, center_riders, deliveries, now)

    # ------------------------------------------------------------------ phases

    def _start_shifts(self, center_id: int, riders: dict[int, Rider]) -> None:
        """Put about three quarters of the center's riders on duty (those already on duty count)."""
        target = round(len(riders) * ON_DUTY_SHARE)
        off_duty = [r for r in riders.values() if not r.on_duty]
        missing = target - (len(riders) - len(off_duty))
        for rider in self.rng.sample(off_duty, max(0, min(missing, len(off_duty)))):
            self._set_duty(rider, on_duty=True)

    def _carry_out_plans(self, riders: dict[int, Rider], deliveries: dict[int, Delivery]) -> None:
        """Customers cancel, dispatch takes back or moves an assignment, when their time has come."""
        for delivery_id, at in sorted(self._cancellations.items()):
            delivery = deliveries.get(delivery_id)
            if delivery is None or at > self.sim_time:
                continue
            del self._cancellations[delivery_id]
            order = self._command(services.cancel_order, order_id=delivery.order_id, reason="Customer cancelled")
            if order is not None:
                self.tally.cancelled += 1
                self._sync_rider(riders, order.delivery.rider)
                del deliveries[delivery_id]
        for delivery_id, plan in sorted(self._revocations.items()):
            delivery = deliveries.get(delivery_id)
            if delivery is None or plan.at > self.sim_time:
                continue
            del self._revocations[delivery_id]
            if delivery.status != Status.ASSIGNED or delivery.rider_id != plan.rider_id:
                continue  # picked up already, or someone else moved it first
            other = self._best_rider(riders, delivery, exclude=delivery.rider_id)
            if plan.kind == "reassign" and other is not None:
                self._assign(riders, deliveries, delivery, other, reassign=True)
                continue
            updated = self._command(
                services.unassign_delivery, delivery_id=delivery.pk, expected_version=delivery.version
            )
            if updated is not None:
                self.tally.unassigned += 1
                riders[plan.rider_id].load -= 1
                self._assign_due[delivery.pk] = self.sim_time + self.rng.uniform(*ASSIGN_AFTER)
                deliveries[delivery_id] = updated

    def _move_riders(self, riders: dict[int, Rider], deliveries: dict[int, Delivery], sim_dt: float) -> None:
        """Move every on-duty rider along their route, hand over on arrival, report one GPS fix each."""
        jobs: dict[int, list[Delivery]] = {}
        for delivery in deliveries.values():
            if delivery.status in Delivery.ACTIVE_STATUSES:
                jobs.setdefault(delivery.rider_id, []).append(delivery)
        for rider in riders.values():
            if not rider.on_duty:
                continue
            state = self._state_for(rider)
            before = (state.lat, state.lng)
            rider_jobs = jobs.get(rider.pk, [])
            if rider_jobs:
                self._drive(rider, state, rider_jobs, deliveries, sim_dt)
            else:
                self._wander(rider, state, sim_dt)
            self._report_position(rider, state, before, sim_dt)

    def _dispatch(self, riders: dict[int, Rider], deliveries: dict[int, Delivery]) -> None:
        """Assign deliveries that have waited a few simulated seconds to the best available rider."""
        for delivery in list(deliveries.values()):
            if delivery.status != Status.WAITING:
                continue
            due = self._assign_due.setdefault(delivery.pk, self.sim_time + self.rng.uniform(*ASSIGN_AFTER))
            if due > self.sim_time:
                continue
            rider = self._best_rider(riders, delivery)
            if rider is None:
                return  # nobody free: the rest waits too
            self._assign(riders, deliveries, delivery, rider)

    def _change_shift(self, riders: dict[int, Rider], real_dt: float) -> None:
        """Now and then an idle rider ends their shift, or an off-duty one starts, around the 3/4 mark."""
        if not riders or self.rng.random() >= SHIFT_CHANGES_PER_MINUTE * real_dt / 60:
            return
        target = round(len(riders) * ON_DUTY_SHARE)
        on_duty = [r for r in riders.values() if r.on_duty]
        idle = [r for r in on_duty if r.load == 0]
        off_duty = [r for r in riders.values() if not r.on_duty]
        going_off = len(on_duty) > target or (len(on_duty) == target and self.rng.random() < 0.5)
        candidates = idle if going_off else off_duty
        if candidates:
            self._set_duty(self.rng.choice(candidates), on_duty=not going_off)

    def _take_orders(
        self, center_id: int, riders: dict[int, Rider], deliveries: dict[int, Delivery], now: float
    ) -> None:
        """Orders arrive as a Poisson process at the configured rate (per real minute)."""
        shops = self.shops_by_center[center_id]
        if not shops or self.orders_per_minute <= 0:
            return
        waiting = sum(1 for d in deliveries.values() if d.status == Status.WAITING)
        backlog = MAX_WAITING_PER_RIDER * max(1, sum(1 for r in riders.values() if r.on_duty))
        arrived = 0
        while self._next_order_at[center_id] <= now:
            if arrived == MAX_ORDERS_PER_TICK:
                self._next_order_at[center_id] = now + self._order_gap()
                break
            arrived += 1
            self._next_order_at[center_id] += self._order_gap()
            shop = self.rng.choice(shops)
            if waiting < backlog:
                self._create_order(shop)
                waiting += 1
            else:
                self.tally.orders_held_back += 1

    # ------------------------------------------------------------------ commands

    def _command(self, command, **kwargs):
        """Run a service as the system; a refusal (someone acted meanwhile) is logged and skipped."""
        self.tally.commands += 1
        try:
            return command(actor=None, **kwargs)
        except (CommandRefused, ValidationError, ObjectDoesNotExist) as exc:
            self.tally.refused += 1
            logger.debug("%s %s refused: %s", command.__name__, kwargs, exc)
            return None

    def _set_duty(self, rider: Rider, *, on_duty: bool) -> None:
        # No expected version: the service itself refuses the only harmful cases (already switched,
        # still carrying deliveries), and load changes this tick would make ours stale for nothing.
        updated = self._command(rider_services.set_rider_duty, rider_id=rider.pk, on_duty=on_duty)
        if updated is not None:
            self.tally.shift_changes += 1
            rider.on_duty, rider.version, rider.load = updated.on_duty, updated.version, updated.load
            if not on_duty:
                self._riders.pop(rider.pk, None)

    def _assign(self, riders, deliveries, delivery: Delivery, rider: Rider, *, reassign: bool = False) -> None:
        previous = riders.get(delivery.rider_id) if delivery.rider_id else None
        updated = self._command(
            services.assign_delivery, delivery_id=delivery.pk, rider_id=rider.pk, expected_version=delivery.version
        )
        if updated is None:
            return
        if reassign:
            self.tally.reassigned += 1
        else:
            self.tally.assigned += 1
        self._sync_rider(riders, updated.rider)
        if previous is not None:
            previous.load -= 1
        deliveries[delivery.pk] = updated
        if self.rng.random() < REVOKE_SHARE:
            self._revocations[delivery.pk] = Revocation(
                at=self.sim_time + self.rng.uniform(*REVOKE_AFTER),
                kind=self.rng.choice(["unassign", "reassign"]),
                rider_id=rider.pk,
            )

    def _create_order(self, shop: Shop) -> None:
        rng = self.rng
        distance = CUSTOMER_RADIUS_M * math.sqrt(rng.uniform(0.01, 1.0))
        angle = rng.uniform(0, 2 * math.pi)
        lat, lng = offset((shop.lat, shop.lng), distance * math.cos(angle), distance * math.sin(angle))
        menu = _menu_for(shop)
        items = [{"name": name, "qty": rng.choice([1, 1, 1, 2, 2, 3])} for name in rng.sample(menu, rng.randint(1, 3))]
        street = rng.choice(STREETS.get(self.centers[shop.center_id].code, DEFAULT_STREETS))
        address = f"{street} {rng.randint(1, 120)}-gil {rng.randint(1, 60)}"
        if rng.random() < 0.4:
            address += f", {rng.randint(1, 25)}{rng.randint(1, 8):02d}-ho"
        order = self._command(
            services.create_order,
            shop_id=shop.pk,
            customer_name=f"{rng.choice(FAMILY_NAMES)} {rng.choice(GIVEN_NAMES)}",
            customer_phone=f"010-{rng.randint(2000, 9999):04d}-{rng.randint(0, 9999):04d}",
            address=f"{address}, Seoul",
            lat=round(lat, 6),
            lng=round(lng, 6),
            items=items,
            note=rng.choice(NOTES) if rng.random() < 0.25 else "",
        )
        if order is None:
            return
        self.tally.orders_created += 1
        delivery_id = order.delivery.pk
        self._assign_due[delivery_id] = self.sim_time + rng.uniform(*ASSIGN_AFTER)
        if rng.random() < CANCEL_SHARE:
            self._cancellations[delivery_id] = self.sim_time + rng.uniform(*CANCEL_AFTER)

    # ------------------------------------------------------------------ riders

    def _best_rider(self, riders: dict[int, Rider], delivery: Delivery, *, exclude: int | None = None) -> Rider | None:
        """The on-duty rider with the lowest load, nearest to the shop among equals."""
        shop = (delivery.shop.lat, delivery.shop.lng)
        candidates = [r for r in riders.values() if r.on_duty and r.load < MAX_LOAD and r.pk != exclude]
        if not candidates:
            return None
        return min(candidates, key=lambda r: (r.load, distance_m(self._position_of(r), shop), r.pk))

    def _position_of(self, rider: Rider) -> Point:
        state = self._riders.get(rider.pk)
        if state is not None:
            return (state.lat, state.lng)
        if rider.last_lat is not None and rider.last_lng is not None:
            return (rider.last_lat, rider.last_lng)
        center = self.centers[rider.center_id]
        return (center.lat, center.lng)

    def _state_for(self, rider: Rider) -> RiderState:
        """The rider's simulated state, rebuilt from their last known position when first met."""
        state = self._riders.get(rider.pk)
        if state is None:
            lat, lng = self._position_of(rider)
            if rider.last_lat is None:
                lat, lng = offset((lat, lng), self.rng.uniform(-1500, 1500), self.rng.uniform(-1500, 1500))
            state = RiderState(lat=lat, lng=lng, kmh=self.rng.uniform(*VEHICLE_KMH.get(rider.vehicle, (20.0, 35.0))))
            self._riders[rider.pk] = state
        return state

    def _sync_rider(self, riders: dict[int, Rider], updated: Rider | None) -> None:
        """Keep the tick's copy of a rider in step with what a service just returned."""
        if updated is not None and updated.pk in riders:
            rider = riders[updated.pk]
            rider.load, rider.version, rider.on_duty = updated.load, updated.version, updated.on_duty

    def _drive(self, rider, state: RiderState, jobs: list[Delivery], deliveries, sim_dt: float) -> None:
        """Head for the next stop (a shop to pick up at, or a customer); hand over on arrival."""
        if not self._stop_still_valid(state.stop, jobs):
            self._route_to(state, self._next_stop(state, jobs))
            state.kmh = self.rng.uniform(*VEHICLE_KMH.get(rider.vehicle, (20.0, 35.0)))
        if not self._advance(state, state.kmh / 3.6 * sim_dt):
            return
        stop, state.stop = state.stop, None
        if stop.kind == "shop":
            for delivery in jobs:
                if delivery.status == Status.ASSIGNED and delivery.shop_id == stop.key:
                    updated = self._command(
                        services.pick_up_delivery, delivery_id=delivery.pk, expected_version=delivery.version
                    )
                    if updated is not None:
                        self.tally.picked_up += 1
                        self._carried_since[delivery.pk] = self.sim_time
                        deliveries[delivery.pk] = updated
        else:
            delivery = deliveries[stop.key]
            updated = self._command(
                services.deliver_delivery, delivery_id=delivery.pk, expected_version=delivery.version
            )
            if updated is not None:
                self.tally.delivered += 1
                rider.load, rider.version = updated.rider.load, updated.rider.version
                del deliveries[delivery.pk]

    def _stop_still_valid(self, stop: Stop | None, jobs: list[Delivery]) -> bool:
        if stop is None or stop.kind == "wander":
            return False
        if stop.kind == "shop":
            return any(d.status == Status.ASSIGNED and d.shop_id == stop.key for d in jobs)
        return any(d.status == Status.PICKED_UP and d.pk == stop.key for d in jobs)

    def _next_stop(self, state: RiderState, jobs: list[Delivery]) -> Stop:
        """The nearest shop to pick up at or customer to deliver to; a long-carried order goes first."""
        here = (state.lat, state.lng)
        stops = []
        for delivery in jobs:
            if delivery.status == Status.ASSIGNED:
                stops.append(Stop("shop", (delivery.shop.lat, delivery.shop.lng), delivery.shop_id))
            else:
                stops.append(Stop("customer", self._customer_point(delivery), delivery.pk))
        overdue = [
            s
            for s, d in zip(stops, jobs, strict=True)
            if d.status == Status.PICKED_UP
            and self._carried_since.setdefault(d.pk, self.sim_time) + OVERDUE_CARRIED < self.sim_time
        ]
        return min(overdue or stops, key=lambda s: (distance_m(here, s.point), s.key))

    def _customer_point(self, delivery: Delivery) -> Point:
        order = delivery.order
        if order.lat is not None and order.lng is not None:
            return (order.lat, order.lng)
        # Taken without coordinates (a phone order): a stable spot near the shop stands in for it.
        if delivery.pk not in self._customer_points:
            spot = random.Random(delivery.pk)
            self._customer_points[delivery.pk] = offset(
                (delivery.shop.lat, delivery.shop.lng), spot.uniform(-1200, 1200), spot.uniform(-1200, 1200)
            )
        return self._customer_points[delivery.pk]

    def _wander(self, rider: Rider, state: RiderState, sim_dt: float) -> None:
        """An idle rider drifts slowly between spots near the center, pausing now and then."""
        if state.pause_until > self.sim_time:
            return
        if state.stop is None or state.stop.kind != "wander":
            center = self.centers[rider.center_id]
            distance = WANDER_RADIUS_M * math.sqrt(self.rng.random())
            angle = self.rng.uniform(0, 2 * math.pi)
            point = offset((center.lat, center.lng), distance * math.cos(angle), distance * math.sin(angle))
            self._route_to(state, Stop("wander", point))
            state.kmh = self.rng.uniform(*WANDER_KMH)
        if self._advance(state, state.kmh / 3.6 * sim_dt):
            state.stop = None
            state.pause_until = self.sim_time + self.rng.uniform(*WANDER_PAUSE)

    def _route_to(self, state: RiderState, stop: Stop) -> None:
        """Go via a jittered corner most of the time, so a route looks like streets, not a bird."""
        state.stop = stop
        here = (state.lat, state.lng)
        state.route = [stop.point]
        if distance_m(here, stop.point) > 300 and self.rng.random() < 0.7:
            corner = (here[0], stop.point[1]) if self.rng.random() < 0.5 else (stop.point[0], here[1])
            state.route.insert(0, offset(corner, self.rng.gauss(0, 60), self.rng.gauss(0, 60)))

    def _advance(self, state: RiderState, metres: float) -> bool:
        """Move up to `metres` along the route; return whether the last waypoint is reached."""
        while state.route:
            target = state.route[0]
            remaining = distance_m((state.lat, state.lng), target)
            if remaining - metres <= ARRIVED_M:
                state.lat, state.lng = target
                metres = max(0.0, metres - remaining)
                state.route.pop(0)
                continue
            share = metres / remaining
            state.lat += (target[0] - state.lat) * share
            state.lng += (target[1] - state.lng) * share
            return False
        return True

    def _report_position(self, rider: Rider, state: RiderState, before: Point, sim_dt: float) -> None:
        """Send one GPS fix the way a phone would: a little noise, a heading, the speed it rode at."""
        moved = distance_m(before, (state.lat, state.lng))
        accuracy = round(self.rng.uniform(4.0, 15.0), 1)
        lat, lng = offset((state.lat, state.lng), self.rng.gauss(0, accuracy / 3), self.rng.gauss(0, accuracy / 3))
        positions.record_fix(
            rider_id=rider.pk,
            center_code=self.centers[rider.center_id].code,
            lat=round(lat, 6),
            lng=round(lng, 6),
            ts=timezone.now(),
            accuracy=accuracy,
            heading=round(bearing(before, (state.lat, state.lng)), 1) if moved > 0.5 else None,
            # The nominal speed, not the sped-up one: dashboards should show plausible numbers.
            speed=round(min(moved / sim_dt, state.kmh / 3.6), 1) if sim_dt > 0 else 0.0,
        )
        self.tally.positions += 1

    # ------------------------------------------------------------------ bookkeeping

    def _order_gap(self) -> float:
        if self.orders_per_minute <= 0:
            return math.inf
        return self.rng.expovariate(self.orders_per_minute / 60)

    def _forget_closed(self, open_ids: set[int]) -> None:
        for memo in (
            self._assign_due,
            self._carried_since,
            self._cancellations,
            self._revocations,
            self._customer_points,
        ):
            for delivery_id in [pk for pk in memo if pk not in open_ids]:
                del memo[delivery_id]


def _menu_for(shop: Shop) -> list[str]:
    name = shop.name.lower()
    return next((menu for keyword, menu in MENUS.items() if keyword in name), DEFAULT_MENU)
