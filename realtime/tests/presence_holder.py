"""A stand-in server process for the presence tests: registers connections and heart-beats until killed.

Run from the project root with the test's environment (SECRET_KEY, DATABASE_URL, REDIS_URL,
REDIS_PREFIX). It prints its presence process id once its connections are registered.
"""

import argparse
import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bros.settings")

import django

django.setup()

from realtime.presence import Presence  # noqa: E402


async def hold(*, connections: int, user_id: int, streams: list[str], ttl: float, heartbeat: float) -> None:
    presence = Presence(ttl=ttl, heartbeat_interval=heartbeat)
    await presence.start()
    for index in range(connections):
        conn_id = f"holder-{index}"
        await presence.connect(conn_id, user_id=user_id, username=f"holder-{user_id}", role="dispatcher")
        await presence.set_streams(conn_id, streams)
    print(presence.process_id, flush=True)
    await presence.keep_alive()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=3)
    parser.add_argument("--user", type=int, required=True)
    parser.add_argument("--stream", action="append", default=[])
    parser.add_argument("--ttl", type=float, default=2)
    parser.add_argument("--heartbeat", type=float, default=0.5)
    args = parser.parse_args()
    asyncio.run(
        hold(
            connections=args.connections,
            user_id=args.user,
            streams=args.stream,
            ttl=args.ttl,
            heartbeat=args.heartbeat,
        )
    )


if __name__ == "__main__":
    main()
