"""Presence: who is connected, per stream, user, role, center and server process (protocol §3).

Each server process registers itself under a key that expires unless its heartbeat refreshes
it, and keeps its connections in one hash. A process that dies (even by SIGKILL) stops
refreshing, its key expires within its TTL, and readers then ignore it and delete its hash.
Data stays flat (the seeds' incident: KEYS plus one HGETALL per key): a reader makes three round
trips however many processes and connections there are.

Redis layout (`<p>` is settings.REDIS_PREFIX, read at call time):
- `<p>:presence:procs`        set of process ids
- `<p>:presence:proc:<id>`    JSON {kind, host, pid, started, t, cpu, rss, and for a server process its
                              running totals (realtime.metrics)}, TTL settings.REALTIME_PRESENCE_TTL
- `<p>:presence:conns:<id>`   hash: connection id -> JSON {user, username, role, streams, since}
- `<p>:presence:samples`      sorted set by time: each heartbeat's figures of each process, for the
                              ops monitor's last hour (bounded by age and by SAMPLES_MAX members)

Celery's worker and beat heart-beat into the same set and keys (`ThreadHeartbeat`, kind "worker" or
"beat") with no connections, so the ops monitor sees every process the same way.

A process keeps its own connections in memory as well; the heartbeat writes them back whenever
Redis lost them (the process key expired during a stall, or a write failed), so a failed
presence write never needs to be retried by the caller.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from collections import Counter

import redis.asyncio
from django.conf import settings
from redis.exceptions import RedisError

from realtime.bus import REDIS_DOWN, RedisUnavailable, get_redis, redis_health
from realtime.metrics import stats
from realtime.streams import UnknownStream, parse_stream

try:
    import psutil
except ImportError:  # optional: the ops monitor then shows no CPU or memory
    psutil = None

logger = logging.getLogger(__name__)

# Delete a dead process's hash and set membership only if its key is still missing: a check
# and a delete in two commands could erase a process that heart-beat in between.
_COLLECT_DEAD = """
if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('DEL', KEYS[2])
    redis.call('SREM', KEYS[3], ARGV[1])
    return 1
end
return 0
"""


def _key(*parts: str) -> str:
    return ":".join((settings.REDIS_PREFIX, "presence", *parts))


def procs_key() -> str:
    return _key("procs")


def proc_key(process_id: str) -> str:
    return _key("proc", process_id)


def conns_key(process_id: str) -> str:
    return _key("conns", process_id)


def samples_key() -> str:
    return _key("samples")


SAMPLES_WINDOW = 3600.0  # seconds of samples kept for the ops monitor's chart
SAMPLES_MAX = 20_000  # a hard bound whatever the number of processes (about 80 at one per 15 s)


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _usage(process) -> dict:
    """CPU (% of one core since the last call) and resident memory of a psutil process, if known."""
    if process is None:
        return {"cpu": None, "rss": None}
    try:
        return {"cpu": process.cpu_percent(None), "rss": process.memory_info().rss}
    except psutil.Error:
        return {"cpu": None, "rss": None}


def _queue_sample(pipe, process_id: str, figures: dict, now: float) -> None:
    """Queue one sample of a process's figures, trimming the set to the last hour and its bound."""
    sample = {"p": process_id, **{k: v for k, v in figures.items() if k not in ("host", "started")}}
    pipe.zadd(samples_key(), {_compact(sample): now})
    pipe.zremrangebyscore(samples_key(), "-inf", now - SAMPLES_WINDOW)
    pipe.zremrangebyrank(samples_key(), 0, -SAMPLES_MAX - 1)


class Presence:
    """This server process's entry in presence: its heartbeat and its connections.

    Used from the process's event loop only. The hub calls `start()` once, `heartbeat()` every
    `heartbeat_interval` seconds, and `stop()` on shutdown; the consumer calls `connect()`,
    `set_streams()` and `disconnect()`. Those three share round trips: each marks its connection
    changed and waits for the next write, which sends every connection changed meanwhile in one
    pipeline (a connection storm's thousands of writes were one round trip each, queued for the
    pool's 64 Redis connections: issue 13). When they return, Redis holds the change, as before.
    A heartbeat is one round trip (two when it has to write the connections back). `client`
    belongs to the caller.
    """

    def __init__(self, client: redis.asyncio.Redis, *, process_id: str, ttl: float, heartbeat_interval: float):
        if heartbeat_interval >= ttl:
            raise ValueError("The heartbeat must come more often than the process key expires.")
        self.redis = client
        self.ttl = ttl
        self.heartbeat_interval = heartbeat_interval
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.process_id = process_id
        self.started = time.time()
        self._conns: dict[str, dict] = {}
        self._changed: set[str] = set()  # connections whose entry the next write sets or deletes
        self._next_write: asyncio.Future | None = None
        self._write_lock = asyncio.Lock()  # one write at a time: a later one never overtakes
        self._flushes: set[asyncio.Future] = set()
        self._stopped = False
        self._process = psutil.Process() if psutil is not None else None
        if self._process is not None:
            self._process.cpu_percent(None)  # the first reading only starts the measurement

    @property
    def _ttl_ms(self) -> int:
        return int(self.ttl * 1000)

    def _figures(self, now: float) -> dict:
        """This process's record: who it is, its CPU and memory, its connections and running totals."""
        return {
            "kind": "web",
            "host": self.host,
            "pid": self.pid,
            "started": round(self.started, 3),
            "t": round(now, 3),
            **_usage(self._process),
            "conns": len(self._conns),
            **stats.sample(),
        }

    def _write_record(self, pipe) -> None:
        """Queue this process's record (with its TTL) and a sample of it for the last hour."""
        now = time.time()
        figures = self._figures(now)
        pipe.set(proc_key(self.process_id), _compact(figures), px=self._ttl_ms)
        _queue_sample(pipe, self.process_id, figures, now)

    def _write_all(self, pipe) -> None:
        """Queue a rewrite of this process's hash from its in-memory connections."""
        pipe.delete(conns_key(self.process_id))
        if self._conns:
            pipe.hset(
                conns_key(self.process_id),
                mapping={conn_id: _compact(conn) for conn_id, conn in self._conns.items()},
            )

    async def start(self) -> None:
        """Register this process (and any connections it already holds)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            self._write_record(pipe)
            pipe.sadd(procs_key(), self.process_id)
            self._write_all(pipe)
            await pipe.execute()

    async def heartbeat(self) -> None:
        """Keep this process alive in presence and record its CPU and memory.

        If Redis no longer holds exactly this process's connections (its key expired during a
        stall and a reader collected it, or a connect/disconnect write failed), write them back.
        """
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.exists(proc_key(self.process_id))
            pipe.hlen(conns_key(self.process_id))
            self._write_record(pipe)
            pipe.sadd(procs_key(), self.process_id)
            existed, stored, *_ = await pipe.execute()
        if existed and stored == len(self._conns):
            return
        if not existed:
            logger.warning("Presence key of process %s had expired; registering it again.", self.process_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            self._write_all(pipe)
            await pipe.execute()

    async def stop(self) -> None:
        """Remove this process and all its connections from presence (a second call does nothing)."""
        if self._stopped:
            return
        self._stopped = True
        self._conns.clear()
        now = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(proc_key(self.process_id), conns_key(self.process_id))
            pipe.srem(procs_key(), self.process_id)
            # The last sample says it stopped on purpose: the ops monitor flags only silent deaths.
            _queue_sample(pipe, self.process_id, {"kind": "web", "t": round(now, 3), "stopped": True}, now)
            await pipe.execute()

    async def connect(self, conn_id: str, *, user_id: int, username: str, role: str | None) -> None:
        """Record an authenticated connection of this process, subscribed to nothing yet."""
        conn = {"user": user_id, "username": username, "role": role, "streams": [], "since": round(time.time(), 3)}
        self._conns[conn_id] = conn
        await self._write(conn_id)

    async def set_streams(self, conn_id: str, streams: list[str]) -> None:
        """Record the full list of streams a connection is now subscribed to.

        A connection already disconnected is ignored: a subscribe may finish after its socket closed.
        """
        conn = self._conns.get(conn_id)
        if conn is None:
            return
        conn["streams"] = sorted(set(streams))
        await self._write(conn_id)

    async def disconnect(self, conn_id: str) -> None:
        """Remove a connection of this process."""
        self._conns.pop(conn_id, None)
        await self._write(conn_id)

    async def _write(self, conn_id: str) -> None:
        """Wait until Redis holds the connection's current entry (or its absence); raises RedisError."""
        self._changed.add(conn_id)
        if self._next_write is None:
            self._next_write = asyncio.get_running_loop().create_future()
            # Retrieved here too, so that a failure whose waiters were all cancelled is not logged.
            self._next_write.add_done_callback(lambda f: f.cancelled() or f.exception())
            flush = asyncio.ensure_future(self._flush())
            self._flushes.add(flush)  # a reference until it is done: the loop keeps only weak ones
            flush.add_done_callback(self._flushes.discard)
        # Shielded: a connection cancelled while waiting must not cancel the others' write.
        await asyncio.shield(self._next_write)

    async def _flush(self) -> None:
        """Write every changed connection's entry in one pipeline, after the write before it."""
        async with self._write_lock:
            await asyncio.sleep(0)  # let the connections handled in this loop iteration join in
            changed, self._changed = self._changed, set()
            done, self._next_write = self._next_write, None
            present = {c: _compact(self._conns[c]) for c in changed if c in self._conns}
            gone = [c for c in changed if c not in self._conns]
            if self._stopped:  # stop() removed the whole hash: nothing to write after it
                done.set_result(None)
                return
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    if present:
                        pipe.hset(conns_key(self.process_id), mapping=present)
                    if gone:
                        pipe.hdel(conns_key(self.process_id), *gone)
                    await pipe.execute()
            except BaseException as exc:
                done.set_exception(exc if isinstance(exc, Exception) else RedisError("presence write cancelled"))
                if not isinstance(exc, Exception):
                    raise
            else:
                done.set_result(None)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _live_processes() -> list[tuple[str, dict, list[dict]]]:
    """Return (process id, process record, connections) of every live process; collect dead ones.

    Three round trips: the set, the process keys, then the live hashes (and the dead ones' cleanup).
    """
    client = get_redis()
    process_ids = sorted(_text(member) for member in client.smembers(procs_key()))
    if not process_ids:
        return []
    with client.pipeline(transaction=False) as pipe:
        for process_id in process_ids:
            pipe.get(proc_key(process_id))
        records = pipe.execute()
    live = [(process_id, json.loads(record)) for process_id, record in zip(process_ids, records, strict=True) if record]
    dead = [process_id for process_id, record in zip(process_ids, records, strict=True) if not record]
    with client.pipeline(transaction=False) as pipe:
        for process_id, _ in live:
            pipe.hgetall(conns_key(process_id))
        for process_id in dead:
            pipe.eval(_COLLECT_DEAD, 3, proc_key(process_id), conns_key(process_id), procs_key(), process_id)
        results = pipe.execute()
    if dead:
        logger.info("Presence collected dead processes: %s", ", ".join(dead))
    return [
        (process_id, record, [json.loads(value) for value in conns.values()])
        for (process_id, record), conns in zip(live, results[: len(live)], strict=True)
    ]


def _center_of(stream: str) -> str | None:
    try:
        return parse_stream(stream).center_code
    except UnknownStream:
        return None


def presence_snapshot() -> dict:
    """Return who is connected now, across all live server processes.

    `by_stream` counts connections subscribed to each stream, `by_center` connections subscribed
    to at least one stream of the center, `by_user` connections per user id, `by_role` per role.
    Presence lives in Redis only: while it is unreachable, raise `RedisUnavailable`.
    """
    try:
        live = _live_processes()
    except REDIS_DOWN as exc:
        redis_health.down(exc)
        raise RedisUnavailable("Presence is unavailable while Redis is unreachable; try again shortly.") from exc
    redis_health.up()
    processes = []
    by_stream: Counter[str] = Counter()
    by_user: Counter[int] = Counter()
    by_role: Counter[str] = Counter()
    by_center: Counter[str] = Counter()
    for process_id, record, conns in live:
        processes.append(
            {
                **record,  # the ops monitor reads the running totals; the API shows its fields only
                "id": process_id,
                "kind": record.get("kind", "web"),
                "host": record.get("host"),
                "pid": record.get("pid"),
                "started": record.get("started"),
                "connections": len(conns),
                "by_role": dict(sorted(Counter(conn.get("role") or "none" for conn in conns).items())),
                "cpu": record.get("cpu"),
                "rss": record.get("rss"),
            }
        )
        for conn in conns:
            by_user[conn["user"]] += 1
            by_role[conn.get("role") or "none"] += 1
            streams = set(conn.get("streams", ()))
            by_stream.update(streams)
            by_center.update({_center_of(stream) for stream in streams} - {None})
    return {
        "processes": processes,
        "connections": sum(process["connections"] for process in processes),
        "by_stream": dict(sorted(by_stream.items())),
        "by_user": {str(user_id): n for user_id, n in sorted(by_user.items())},
        "by_role": dict(sorted(by_role.items())),
        "by_center": dict(sorted(by_center.items())),
    }


class ThreadHeartbeat:
    """Presence for a process without an event loop (Celery's worker and beat): a daemon thread.

    It writes the same process record and samples as a server process, with no connections, every
    REALTIME_PRESENCE_HEARTBEAT seconds, so the ops monitor shows the process's health, CPU and
    memory and flags it when it stops heart-beating. A failed write is retried at the next beat.
    """

    def __init__(self, kind: str, *, interval: float | None = None, ttl: float | None = None):
        self.kind = kind
        self.interval = interval if interval is not None else settings.REALTIME_PRESENCE_HEARTBEAT
        self.ttl = ttl if ttl is not None else settings.REALTIME_PRESENCE_TTL
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.process_id = f"{kind}-{self.host}-{self.pid}"
        self.started = time.time()
        self._process = psutil.Process() if psutil is not None else None
        _usage(self._process)  # the first CPU reading only starts the measurement
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"presence-{kind}", daemon=True)

    def start(self) -> ThreadHeartbeat:
        self._thread.start()
        return self

    def beat(self) -> None:
        """Write this process's record and one sample (one round trip)."""
        now = time.time()
        figures = {
            "kind": self.kind,
            "host": self.host,
            "pid": self.pid,
            "started": round(self.started, 3),
            "t": round(now, 3),
            **_usage(self._process),
            "conns": 0,
        }
        with get_redis().pipeline(transaction=True) as pipe:
            pipe.set(proc_key(self.process_id), _compact(figures), px=int(self.ttl * 1000))
            pipe.sadd(procs_key(), self.process_id)
            _queue_sample(pipe, self.process_id, figures, now)
            pipe.execute()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
            except Exception:
                logger.warning("%s heartbeat failed; retrying in %.0f s", self.kind, self.interval, exc_info=True)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        """Leave presence at once (a clean stop is not flagged as a silent death)."""
        self._stop.set()
        now = time.time()
        try:
            with get_redis().pipeline(transaction=True) as pipe:
                pipe.delete(proc_key(self.process_id))
                pipe.srem(procs_key(), self.process_id)
                _queue_sample(pipe, self.process_id, {"kind": self.kind, "t": round(now, 3), "stopped": True}, now)
                pipe.execute()
        except Exception:
            logger.warning("%s presence stop failed; its key expires by itself", self.kind, exc_info=True)


def last_run_key(task: str) -> str:
    return _key("last_run", task)


def record_last_run(task: str) -> None:
    """Note that a periodic task just ran (the ops monitor shows when reconcile last did).

    During a Redis outage the note is skipped (the outage is logged once, by `redis_health`).
    """
    try:
        get_redis().set(last_run_key(task), f"{time.time():.3f}")
    except REDIS_DOWN as exc:
        redis_health.down(exc)
