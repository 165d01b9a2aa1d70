"""Test-only faults on the bus publish, for the chaos suite (docs/realtime.md, "Chaos suite").

`REALTIME_BUS_FAULTS` is never set in production. In a test server process it makes the publish
after commit misbehave the way Redis pub/sub may, so the suite can prove that subscribers still
get every event exactly once and in order:

- `drop=0.2`: a fifth of the messages are never published (yet marked published, as a message
  lost on the wire would be), so only the hub's gap fill and heads check can deliver them;
- `duplicate=0.2`: a fifth are published twice;
- `delay=0.2`: a fifth are published 20–300 ms later, from another thread, after later events;
- `crash`: the process SIGKILLs itself after the commit, before publishing anything, so only the
  outbox sweep can deliver the events;
- `seed=7`: the random choices are repeatable.

Example: `REALTIME_BUS_FAULTS=drop=0.2,duplicate=0.2,delay=0.2,seed=7`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import signal
import threading
from dataclasses import dataclass, field

from django.conf import settings

from realtime.bus import REDIS_DOWN, get_redis

logger = logging.getLogger(__name__)


@dataclass
class BusFaults:
    drop: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0
    crash: bool = False
    seed: int | None = None
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @classmethod
    def parse(cls, spec: str) -> BusFaults:
        """`drop=0.2,duplicate=0.1,delay=0.1,crash,seed=7` → BusFaults (unknown keys are an error)."""
        faults = cls()
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, _, value = part.partition("=")
            if key == "crash":
                faults.crash = True
            elif key == "seed":
                faults.seed = int(value)
            elif key in ("drop", "duplicate", "delay"):
                setattr(faults, key, float(value))
            else:
                raise ValueError(f"unknown bus fault {key!r} in REALTIME_BUS_FAULTS")
        faults.__post_init__()
        return faults

    def before_publish(self) -> None:
        """Called after the commit, before the publish: `crash` dies here, like a killed process."""
        if self.crash:
            os.kill(os.getpid(), signal.SIGKILL)

    def publish(self, pipe, channel: str, message: bytes) -> None:
        """Queue `message` on `pipe` — or drop, duplicate or delay it."""
        roll = self.rng.random()
        if roll < self.drop:
            fault = "dropped"
        elif roll < self.drop + self.duplicate:
            fault = "duplicated"
            pipe.publish(channel, message)
            pipe.publish(channel, message)
        elif roll < self.drop + self.duplicate + self.delay:
            fault = "delayed"
            timer = threading.Timer(self.rng.uniform(0.02, 0.3), _publish_late, (channel, message))
            timer.daemon = True
            timer.start()
        else:
            pipe.publish(channel, message)
            return
        # One line per fault, so a test can count what it survived.
        logger.info("bus fault: %s %s seq %s", fault, channel, message.split(b"\n", 1)[0].decode())


def _publish_late(channel: str, message: bytes) -> None:
    with contextlib.suppress(REDIS_DOWN):  # the publish is lost, as any during an outage
        get_redis().publish(channel, message)


@functools.cache
def _parsed(spec: str) -> BusFaults | None:
    return BusFaults.parse(spec) if spec else None


def bus_faults() -> BusFaults | None:
    """This process's bus faults, or None (always, outside the chaos suite)."""
    return _parsed(getattr(settings, "REALTIME_BUS_FAULTS", ""))
