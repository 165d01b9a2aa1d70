"""The Django side of bench/shift.py, run by it as a subprocess (with the benchmark's env).

    python bench/shift_setup.py data --dashboards 2000 --riders 1500 --out plan.json
    python bench/shift_setup.py queries --out queries.json

`data` (on a migrated, seeded database): 1,500 riders (spread evenly over the demo's 3 centers,
on duty), one dispatcher account per dashboard (spread the same way), one session per account
and rider (written straight into Django's session table: logging 3,500 accounts in through the
form would spend minutes in password hashing), and API tokens for the commands: `--tokens-per-center`
per center, each scoped to that center's `orders` and `deliveries` (each token has its own command
allowance, `API_COMMAND_RATE`: 10/s by default). Riders are
put on duty in bulk, without the duty command: the benchmark measures the shift, not its start.

`queries`: the SQL statements one command runs, counted with Django's `CaptureQueriesContext`
while the real API views run in-process through `django.test.Client` with the benchmark's token:
one create → assign → pickup → deliver cycle per center, after the load run (so it does not
disturb it). The same view code the servers run; not counted inside the server processes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bros.settings")

import django

django.setup()

from django.contrib.auth.hashers import make_password  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from bench.sessions import login_sessions  # noqa: E402
from core.models import ApiToken, Center, StaffProfile  # noqa: E402
from deliveries.models import Shop  # noqa: E402
from riders.models import Rider  # noqa: E402

CENTERS = 3
TOKEN_COMMANDS = ["orders.create", "deliveries.assign", "deliveries.pickup", "deliveries.deliver"]


def spread(total: int, parts: int) -> list[int]:
    """`total` split over `parts` as evenly as possible (the first ones get the remainder)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _users(prefix: str, count: int, password_hash: str) -> list[User]:
    User.objects.bulk_create(
        [User(username=f"{prefix}-{n:05d}", password=password_hash, first_name=prefix) for n in range(count)]
    )
    return list(User.objects.filter(username__startswith=f"{prefix}-").order_by("username"))


@transaction.atomic
def make_data(dashboards: int, riders: int, tokens_per_center: int) -> dict:
    centers = list(Center.objects.order_by("code"))[:CENTERS]
    if len(centers) < CENTERS:
        raise SystemExit(f"need {CENTERS} centers (seed_demo), found {len(centers)}")
    password_hash = make_password(None)  # unusable: these accounts only ever use their session
    plan = {"centers": [], "token": None}
    for center, n_dash, n_riders in zip(centers, spread(dashboards, CENTERS), spread(riders, CENTERS), strict=True):
        dispatchers = _users(f"shift-d-{center.code}", n_dash, password_hash)
        StaffProfile.objects.bulk_create(
            [StaffProfile(user=u, role=StaffProfile.Role.DISPATCHER) for u in dispatchers], batch_size=1000
        )
        rider_users = _users(f"shift-r-{center.code}", n_riders, password_hash)
        StaffProfile.objects.bulk_create(
            [StaffProfile(user=u, role=StaffProfile.Role.RIDER) for u in rider_users], batch_size=1000
        )
        profiles = StaffProfile.objects.filter(user__in=[*dispatchers, *rider_users])
        StaffProfile.centers.through.objects.bulk_create(
            [StaffProfile.centers.through(staffprofile_id=p.pk, center_id=center.pk) for p in profiles],
            batch_size=1000,
        )
        Rider.objects.bulk_create(
            [
                Rider(
                    user=u,
                    center=center,
                    name=f"Shift rider {i}",
                    on_duty=True,
                    last_lat=center.lat,
                    last_lng=center.lng,
                )
                for i, u in enumerate(rider_users)
            ],
            batch_size=1000,
        )
        rider_rows = dict(Rider.objects.filter(user__in=rider_users).values_list("user_id", "pk"))
        plan["centers"].append(
            {
                "code": center.code,
                "lat": center.lat,
                "lng": center.lng,
                "shops": list(Shop.objects.filter(center=center, is_active=True).values_list("pk", flat=True)),
                "dashboards": login_sessions(dispatchers),
                "tokens": [_token(f"shift-bench-{center.code}-{n}", center.code) for n in range(tokens_per_center)],
                "riders": [
                    {"id": rider_rows[u.pk], "user": u.pk, "session": key}
                    for u, key in zip(rider_users, login_sessions(rider_users), strict=True)
                ],
            }
        )
    plan["token"] = _token("shift-bench-queries", "*")  # the SQL count's, for every center
    return plan


def _token(name: str, center: str) -> str:
    """A token for the commands on one center's orders and deliveries (or every center's: "*")."""
    raw, digest = ApiToken.generate()
    streams = ["*"] if center == "*" else [f"orders:{center}", f"deliveries:{center}"]
    ApiToken.objects.create(name=name, digest=digest, hint=raw[:12], commands=TOKEN_COMMANDS, streams=streams)
    return raw


def count_queries(token: str) -> dict:
    """SQL statements per command kind, one lifecycle per center, through the real API views."""
    client = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {token}")
    counts: dict[str, list[int]] = {"create": [], "assign": [], "pickup": [], "deliver": []}

    def post(kind: str, path: str, body: dict) -> dict:
        with CaptureQueriesContext(connection) as ctx:
            response = client.post(path, body, content_type="application/json")
        if response.status_code not in (200, 201):
            raise SystemExit(f"POST {path}: HTTP {response.status_code} {response.content[:300]!r}")
        counts[kind].append(len(ctx.captured_queries))
        return response.json()

    for center in Center.objects.order_by("code")[:CENTERS]:
        shop = Shop.objects.filter(center=center, is_active=True).first()
        rider = Rider.objects.filter(center=center, on_duty=True).first()
        order = post(
            "create",
            "/api/v1/orders",
            {
                "shop": shop.pk,
                "customer_name": "Shift Kim",
                "customer_phone": "010-0000-0000",
                "address": "Teheran-ro 1",
                "items": [{"name": "Chicken", "qty": 1}],
            },
        )
        delivery = order["delivery"]["id"] if isinstance(order["delivery"], dict) else order["delivery"]
        post("assign", f"/api/v1/deliveries/{delivery}/assign", {"rider": rider.pk})
        post("pickup", f"/api/v1/deliveries/{delivery}/pickup", {})
        post("deliver", f"/api/v1/deliveries/{delivery}/deliver", {})
    per_kind = {k: sum(v) / len(v) for k, v in counts.items()}
    return {"per_kind": per_kind, "per_command": sum(per_kind.values()) / len(per_kind)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["data", "queries"])
    parser.add_argument("--dashboards", type=int, default=2000)
    parser.add_argument("--riders", type=int, default=1500)
    parser.add_argument("--tokens-per-center", type=int, default=1)
    parser.add_argument("--token", default="")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.what == "data":
        result = make_data(args.dashboards, args.riders, args.tokens_per_center)
    else:
        result = count_queries(args.token)
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
