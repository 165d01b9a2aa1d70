"""The fixed demo data of design.md: centers, shops, riders and accounts (password `demo`)."""

from __future__ import annotations

import functools
import random

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.db import transaction

from core.models import Center, StaffProfile
from deliveries.models import Shop
from riders.models import Rider

DEMO_PASSWORD = "demo"
RIDERS_PER_CENTER = 20

CENTERS = {
    "gangnam": ("Gangnam", 37.4979, 127.0276),
    "mapo": ("Mapo", 37.5563, 126.9236),
    "songpa": ("Songpa", 37.5145, 127.1059),
}

SHOPS = {
    "gangnam": [
        ("Gangnam Fried Chicken", "Teheran-ro 152", 37.5003, 127.0365),
        ("Yeoksam Bibimbap", "Yeoksam-ro 123", 37.4961, 127.0330),
        ("Sinsa Pizza", "Garosu-gil 41", 37.5206, 127.0230),
        ("Nonhyeon Tteokbokki", "Hakdong-ro 101", 37.5110, 127.0285),
        ("Seocho Jjajang", "Seocho-daero 77", 37.4918, 127.0185),
        ("Samseong Burger", "Yeongdong-daero 513", 37.5116, 127.0594),
    ],
    "mapo": [
        ("Hongdae Dakgalbi", "Eoulmadang-ro 65", 37.5547, 126.9225),
        ("Hapjeong Sushi", "Yanghwa-ro 45", 37.5496, 126.9139),
        ("Mangwon Kimbap", "Poeun-ro 8", 37.5560, 126.9057),
        ("Yeonnam Pho", "Donggyo-ro 238", 37.5626, 126.9250),
        ("Gongdeok Jokbal", "Mapo-daero 92", 37.5446, 126.9516),
        ("Sangam Chicken", "World Cup buk-ro 400", 37.5790, 126.8896),
    ],
    "songpa": [
        ("Jamsil Pizza", "Olympic-ro 240", 37.5133, 127.1001),
        ("Seokchon Noodles", "Baekjegobun-ro 360", 37.5050, 127.1035),
        ("Munjeong Bossam", "Beobwon-ro 55", 37.4856, 127.1226),
        ("Garak Fish Market Hoe", "Yangjae-daero 932", 37.4938, 127.1118),
        ("Bangi Sundae", "Ogeum-ro 11", 37.5110, 127.1160),
        ("Wirye Salad", "Wirye-seong-daero 20", 37.4778, 127.1459),
    ],
}

FAMILY = ["Kim", "Lee", "Park", "Choi", "Jung", "Kang", "Cho", "Yoon", "Jang", "Lim"]
GIVEN = [
    "Minjun",
    "Seojun",
    "Doyun",
    "Jiho",
    "Eunwoo",
    "Hajun",
    "Siwoo",
    "Juwon",
    "Yejun",
    "Jimin",
]
VEHICLES = [Rider.Vehicle.MOTORCYCLE] * 16 + [Rider.Vehicle.BICYCLE] * 2 + [Rider.Vehicle.CAR, Rider.Vehicle.WALK]


def _user(
    username: str,
    *,
    password_hash: str,
    first_name="",
    last_name="",
    superuser=False,
    staff=False,
):
    """Get or create a demo account; an existing one keeps its password."""
    user, _ = get_user_model().objects.get_or_create(
        username=username,
        defaults={
            "first_name": first_name,
            "last_name": last_name,
            "is_staff": staff or superuser,
            "is_superuser": superuser,
            "password": password_hash,
        },
    )
    return user


def _profile(user, role: str, centers) -> None:
    profile, _ = StaffProfile.objects.update_or_create(user=user, defaults={"role": role})
    profile.centers.set(centers)


@functools.cache
def _demo_password_hash() -> str:
    """The shared demo password, hashed once per process (hashing is deliberately slow, ~0.3 s).

    Once, not once per account; and once per process, for callers that load the demo data again
    (`seed_demo` tests). The password is public, so a reused salt costs nothing.
    """
    return make_password(DEMO_PASSWORD)


@transaction.atomic
def load_demo_data() -> dict[str, int]:
    """Create the demo data, or bring it back to the demo state; safe to run any number of times."""
    centers = {}
    for code, (name, lat, lng) in CENTERS.items():
        centers[code], _ = Center.objects.update_or_create(code=code, defaults={"name": name, "lat": lat, "lng": lng})
        for shop_name, address, shop_lat, shop_lng in SHOPS[code]:
            Shop.objects.update_or_create(
                center=centers[code],
                name=shop_name,
                defaults={
                    "address": f"{address}, Seoul",
                    "lat": shop_lat,
                    "lng": shop_lng,
                    "is_active": True,
                },
            )

    password_hash = _demo_password_hash()
    _user("admin", password_hash=password_hash, first_name="Admin", superuser=True)
    _profile(
        _user(
            "hq",
            password_hash=password_hash,
            first_name="HQ",
            last_name="Ops",
            staff=True,
        ),
        StaffProfile.Role.HQ,
        [],
    )
    _profile(
        _user(
            "callcenter",
            password_hash=password_hash,
            first_name="Call",
            last_name="Center",
        ),
        StaffProfile.Role.CALLCENTER,
        centers.values(),
    )
    for code, center in centers.items():
        dispatcher = _user(
            f"dispatch-{code}",
            password_hash=password_hash,
            first_name="Dispatch",
            last_name=center.name,
        )
        _profile(dispatcher, StaffProfile.Role.DISPATCHER, [center])
        rng = random.Random(code)  # the same names and spots every time
        for n in range(1, RIDERS_PER_CENTER + 1):
            name = f"{rng.choice(FAMILY)} {rng.choice(GIVEN)}"
            user = _user(f"rider-{code}-{n:02d}", password_hash=password_hash, first_name=name)
            _profile(user, StaffProfile.Role.RIDER, [center])
            Rider.objects.get_or_create(
                user=user,
                defaults={
                    "center": center,
                    "name": name,
                    "phone": f"010-{1000 + n:04d}-{rng.randrange(10000):04d}",
                    "vehicle": VEHICLES[(n - 1) % len(VEHICLES)],
                    "last_lat": center.lat + rng.uniform(-0.02, 0.02),
                    "last_lng": center.lng + rng.uniform(-0.025, 0.025),
                },
            )
    return {
        "centers": Center.objects.count(),
        "shops": Shop.objects.count(),
        "riders": Rider.objects.count(),
    }
