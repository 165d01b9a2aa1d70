"""One load-client process for bench/fanout.py: many WebSocket clients on one asyncio (uvloop) loop.

Run by the runner as `python bench/loadclient.py`; it is steered with one JSON command per line
on stdin and answers one JSON line per command on stdout (see `Worker.handle`).

Each client is an `asyncio.Protocol`. The handshake and every frame the client sends go through
the `websockets` library's sans-I/O `ClientProtocol` (request, `Sec-WebSocket-Accept` check,
masking). Incoming frames are parsed by the same library too with `--parser websockets`; the
default `--parser fast` reads the (unmasked, uncompressed) server frames with a few lines of
slicing instead, because on a 2-core machine the load generator shares the CPU with the servers
it measures: measured here, the `websockets` asyncio client costs ~27 µs of client CPU per
received message, its sans-I/O parser ~13 µs, the slicing parser ~7 µs. Both parsers give the
same counts (`fanout.py --parser websockets` to check).

What a client records per received benchmark event (text `bench r=<tag> n=<n> t0=<unix time>`):
count for the current tag, seq contiguity (gaps, duplicates), latency from `t0` (histogram, 1 ms
buckets) and, per event `n`, how many clients of this process got it and when the last one did.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import socket
import sys
import time

import uvloop
from websockets.client import ClientProtocol
from websockets.frames import Close
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Origin
from websockets.uri import parse_uri

EVENT_RX = re.compile(rb'"seq": ?(\d+).*?bench r=(\d+) n=(\d+) t0=([0-9.]+|-)')
HEAD_RX = re.compile(rb'"head": ?(\d+)')
HIST_BUCKETS = 20_000  # 1 ms buckets: 0..20 s; later is counted in the last bucket

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


class Stats:
    """Counters shared by all clients of this process, reset per step (tag)."""

    def __init__(self):
        self.tag = -1
        self.reset(0)

    def reset(self, tag: int) -> None:
        self.tag = tag
        self.events: dict[int, list] = {}  # n -> [clients that got it, last receipt time]
        self.hist = [0] * HIST_BUCKETS
        self.received = 0
        self.stray = 0  # benchmark events of another tag (late ones from an earlier step)
        self.last_receipt = 0.0
        self.first_t0 = 0.0


STATS = Stats()


class Client(asyncio.Protocol):
    """One WebSocket connection; `kind` is bros, textbook or sio (Engine.IO v4 over WebSocket)."""

    def __init__(self, index: int, kind: str, url: str, headers: dict, fast: bool, subscribe: bytes | None):
        self.index = index
        self.kind = kind
        self.fast = fast
        self.subscribe = subscribe
        self.ws = ClientProtocol(parse_uri(url), origin=Origin(headers.pop("Origin")) if "Origin" in headers else None)
        self.request = self.ws.connect()
        for name, value in headers.items():
            self.request.headers[name] = value
        self.transport = None
        self.handshake_buf = b""
        self.buf = b""
        self.open = False
        loop = asyncio.get_running_loop()
        self.ready = loop.create_future()  # set when subscribed (or failed)
        self.closed = loop.create_future()
        self.received = 0
        self.last_seq = None
        self.gaps = 0
        self.dups = 0
        self.close_code = None
        self.slow = False
        self.other = {}  # control frames seen, by type (bros) — for diagnostics

    # -- transport callbacks -------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.ws.send_request(self.request)
        transport.write(b"".join(self.ws.data_to_send()))

    def connection_lost(self, exc):
        self.open = False
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"lost before ready: {exc!r}"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    def data_received(self, data: bytes):
        if not self.open:
            self._handshake(data)
        elif self.fast:
            self._fast_frames(data)
        else:
            self._ws_frames(data)

    def _handshake(self, data: bytes) -> None:
        self.handshake_buf += data
        end = self.handshake_buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head, rest = self.handshake_buf[: end + 4], self.handshake_buf[end + 4 :]
        self.handshake_buf = b""
        self.ws.receive_data(head)  # the library parses and validates the 101 response
        events = self.ws.events_received()
        if self.ws.state is not State.OPEN or not events or not isinstance(events[0], Response):
            status = events[0].status_code if events and isinstance(events[0], Response) else None
            self._fail(ConnectionError(f"handshake refused (HTTP {status}): {self.ws.handshake_exc!r}"))
            return
        self.open = True
        if self.kind == "bros":
            self.send_text(self.subscribe)
        elif self.kind == "textbook" and not self.ready.done():
            self.ready.set_result(True)  # the consumer joined its group before accepting
        if rest:
            self.data_received(rest)

    def _fail(self, exc: Exception) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    # -- incoming frames ---------------------------------------------------------------------

    def _fast_frames(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            if length < 126:
                start = pos + 2
            elif length == 126:
                if size - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            else:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > size:
                break
            opcode = b0 & 0x0F
            if opcode == OP_TEXT:
                if not b0 & 0x80:
                    raise RuntimeError("fragmented text frame; use --parser websockets")
                self.on_text(buf[start:end])
            elif opcode == OP_PING:
                self.ws.send_pong(buf[start:end])
                self.transport.write(b"".join(self.ws.data_to_send()))
            elif opcode == OP_CLOSE:
                payload = buf[start:end]
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.transport.close()
                return
            elif opcode in (OP_CONT, OP_BINARY):  # never sent by these servers for our payloads
                raise RuntimeError(f"unexpected frame opcode {opcode} (fragmented?); use --parser websockets")
            pos = end
        self.buf = buf[pos:]

    def _ws_frames(self, data: bytes) -> None:
        self.ws.receive_data(data)
        for frame in self.ws.events_received():
            if frame.opcode.value == OP_TEXT:
                self.on_text(frame.data)
            elif frame.opcode.value == OP_CLOSE:
                close = Close.parse(frame.data) if frame.data else None
                self.close_code = close.code if close else 1005
        out = self.ws.data_to_send()  # pongs, close replies
        if out:
            self.transport.write(b"".join(out))
        if self.ws.state is State.CLOSED:
            self.transport.close()

    def send_text(self, payload: bytes) -> None:
        self.ws.send_text(payload)
        self.transport.write(b"".join(self.ws.data_to_send()))

    def on_text(self, payload: bytes) -> None:
        kind = self.kind
        if kind == "bros":
            if payload.startswith(b'{"type":"event"'):
                self.on_event(payload)
            elif payload.startswith(b'{"type":"ping"'):
                self.send_text(b'{"type":"pong"}')
            elif payload.startswith(b'{"type":"subscribed"'):
                m = HEAD_RX.search(payload)
                if m and self.last_seq is None:
                    self.last_seq = int(m.group(1))
                if not self.ready.done():
                    self.ready.set_result(True)
            else:
                kind_of = json.loads(payload).get("type")
                self.other[kind_of] = self.other.get(kind_of, 0) + 1
                if kind_of == "error" and not self.ready.done():
                    self._fail(ConnectionError(payload.decode()))
        elif kind == "textbook":
            self.on_event(payload)
        else:  # Engine.IO v4 packets: 0 open, 2 ping, 4 message (40 connect, 42 event)
            if payload.startswith(b"42"):
                self.on_event(payload)
            elif payload == b"2":
                self.send_text(b"3")
            elif payload.startswith(b"0{"):
                self.send_text(b"40")
            elif payload.startswith(b"40"):
                if not self.ready.done():
                    self.ready.set_result(True)
            elif payload.startswith(b"41") or payload.startswith(b"44"):
                self.other[payload[:2].decode()] = self.other.get(payload[:2].decode(), 0) + 1

    def on_event(self, payload: bytes) -> None:
        now = time.time()
        m = EVENT_RX.search(payload)
        if m is None:
            self.other["unparsed"] = self.other.get("unparsed", 0) + 1
            return
        seq = int(m.group(1))
        last = self.last_seq
        if last is not None and seq != last + 1:
            if seq <= last:
                self.dups += 1
            else:
                self.gaps += seq - last - 1
        if last is None or seq > last:
            self.last_seq = seq
        stats = STATS
        if int(m.group(2)) != stats.tag:
            stats.stray += 1
            return
        self.received += 1
        if self.slow:
            return  # the slow client's own numbers are reported apart
        stats.received += 1
        stats.last_receipt = now
        t0 = m.group(4)
        if t0 != b"-":
            ms = int((now - float(t0)) * 1000)
            stats.hist[ms if 0 <= ms < HIST_BUCKETS else (HIST_BUCKETS - 1 if ms > 0 else 0)] += 1
        n = int(m.group(3))
        entry = stats.events.get(n)
        if entry is None:
            stats.events[n] = [1, now]
        else:
            entry[0] += 1
            entry[1] = now


class Worker:
    def __init__(self):
        self.clients: list[Client] = []
        self.out = sys.stdout

    def reply(self, obj) -> None:
        self.out.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self.out.flush()

    async def connect_one(
        self, spec: dict, index: int, sem: asyncio.Semaphore, timeout: float, fast: bool, results, pause: bool = False
    ):
        kind = spec["kind"]
        host, port, path = spec["host"], spec["port"], spec["path"]
        subscribe = spec.get("subscribe")
        async with sem:
            t0 = time.monotonic()
            loop = asyncio.get_running_loop()
            client = Client(
                index,
                kind,
                f"ws://{host}:{port}{path}",
                dict(spec.get("headers", {})),
                fast,
                subscribe.encode() if subscribe else None,
            )
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                if spec.get("rcvbuf"):  # a small window and a small MSS keep the server's kernel
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, spec["rcvbuf"])  # buffers for
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)  # this socket small
                sock.setblocking(False)
                await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
                await loop.create_connection(lambda: client, sock=sock)
                await asyncio.wait_for(client.ready, timeout)
            except Exception as exc:
                results["failed"] += 1
                key = type(exc).__name__ + ": " + str(exc)[:160]
                results["errors"][key] = results["errors"].get(key, 0) + 1
                if client.transport is not None:
                    client.transport.abort()
                return
            results["times"].append(time.monotonic() - t0)
            if pause:  # a client that stops reading right after it subscribed
                client.slow = True
                client.transport.pause_reading()
                results["ports"].append(client.transport.get_extra_info("sockname")[1])
            self.clients.append(client)

    async def handle(self, cmd: dict):
        op = cmd["cmd"]
        if op == "connect":
            # {"cmd":"connect","specs":[{kind,host,port,path,headers,subscribe,rcvbuf}...],"concurrency":..}
            results = {"failed": 0, "errors": {}, "times": [], "ports": []}
            sem = asyncio.Semaphore(cmd.get("concurrency", 100))
            fast = cmd.get("parser", "fast") == "fast"
            started = time.monotonic()
            await asyncio.gather(
                *(
                    self.connect_one(
                        spec,
                        spec.get("index", i),
                        sem,
                        cmd.get("timeout", 60.0),
                        fast,
                        results,
                        cmd.get("pause", False),
                    )
                    for i, spec in enumerate(cmd["specs"])
                )
            )
            self.clients.sort(key=lambda c: c.index)
            times = sorted(results["times"])
            return {
                "connected": len(self.clients),
                "failed": results["failed"],
                "errors": results["errors"],
                "wall": time.monotonic() - started,
                "times": times,
                "ports": results["ports"],
            }
        if op == "step":
            STATS.reset(cmd["tag"])
            for c in self.clients:
                c.received = 0
            return {"ok": True}
        if op == "progress":
            open_clients = sum(c.open for c in self.clients)
            return {"received": STATS.received, "last_receipt": STATS.last_receipt, "open": open_clients}
        if op == "slow":
            ports = []
            for c in self.clients:
                if c.index in cmd["indexes"]:
                    c.slow = True
                    c.transport.pause_reading()
                    ports.append(c.transport.get_extra_info("sockname")[1])
            return {"ok": True, "ports": ports}
        if op == "resume":
            # Resume the slow clients and give them `wait` seconds to read what is buffered.
            slow = [c for c in self.clients if c.slow]
            for c in slow:
                if not c.transport.is_closing():
                    c.transport.resume_reading()
            if slow:
                await asyncio.wait([c.closed for c in slow], timeout=cmd.get("wait", 3.0))
            return {
                "slow": [
                    {
                        "index": c.index,
                        "received": c.received,
                        "open": c.open,
                        "close_code": c.close_code,
                        "gaps": c.gaps,
                    }
                    for c in slow
                ]
            }
        if op == "stats":
            clients = [c for c in self.clients if not c.slow]
            hist = {i: v for i, v in enumerate(STATS.hist) if v}
            ru = resource.getrusage(resource.RUSAGE_SELF)
            return {
                "tag": STATS.tag,
                "indexes": [c.index for c in clients],
                "received": [c.received for c in clients],
                "gaps": sum(c.gaps for c in clients),
                "dups": sum(c.dups for c in clients),
                "open": sum(c.open for c in clients),
                "close_codes": _count(c.close_code for c in self.clients if c.close_code is not None),
                "other": _merge(c.other for c in clients),
                "stray": STATS.stray,
                "events": {str(n): v for n, v in STATS.events.items()},
                "hist": hist,
                "last_receipt": STATS.last_receipt,
                "cpu": ru.ru_utime + ru.ru_stime,
            }
        if op == "close":
            for c in self.clients:
                if c.transport is not None and not c.transport.is_closing():
                    c.transport.abort()
            return {"ok": True, "exit": True}
        raise ValueError(f"unknown command {op!r}")

    async def run(self):
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        self.reply({"ready": True, "pid": os.getpid()})
        while True:
            line = await reader.readline()
            if not line:
                return
            try:
                answer = await self.handle(json.loads(line))
            except Exception as exc:
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            self.reply(answer)
            if answer.get("exit"):
                return


def _count(values) -> dict:
    out: dict = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


def _merge(dicts) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[str(k)] = out.get(str(k), 0) + v
    return out


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(Worker().run())
