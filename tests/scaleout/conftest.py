"""The scale-out test's set-up: HAProxy (the Debian package) running the shipped `deploy/haproxy.cfg`
in front of the chaos suite's server processes.

`haproxy(servers)` starts HAProxy on a free port with the config's environment variables pointing
at `servers`, waits until its health checks (`GET /healthz`) find every server up, and returns a
`Balancer`: a `LiveServer` whose address is HAProxy's (so the chaos clients and `http_json` go
through it), with its admin socket's `show stat` per server. HAProxy is stopped after the test,
and its log printed when the test failed. Without `/usr/sbin/haproxy` the tests skip, except with
`CI=true`, where they fail: a green CI run must mean the test ran.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chaos.conftest import chaos, chaos_redis, on_chaos_redis  # noqa: F401  (fixtures)
from tests.live.conftest import (  # noqa: F401  (fixtures and the report hook they need)
    PROJECT_ROOT,
    LiveServer,
    db,
    free_port,
    live_prefix,
    live_servers,
    pytest_runtest_makereport,
    session_cookie,
)

HAPROXY = Path("/usr/sbin/haproxy")
CONFIG = PROJECT_ROOT / "deploy" / "haproxy.cfg"
BACKEND = "bros_web"
READY_TIMEOUT = 20.0  # seconds for HAProxy to start and find every server healthy


def running_in_ci() -> bool:
    """Whether this is a CI run (`CI=true`, as CI services and `.ci/run` set it)."""
    return os.environ.get("CI", "").lower() in ("true", "1")


@pytest.fixture(scope="session", autouse=True)
def _haproxy_present():
    if HAPROXY.exists():
        return
    if running_in_ci():
        pytest.fail(f"{HAPROXY} is missing: CI must run the scale-out test (apt-get install haproxy)")
    pytest.skip(f"{HAPROXY} is not installed (apt-get install haproxy)")


@dataclass(eq=False)
class Balancer(LiveServer):
    """HAProxy as clients see it (a `LiveServer` on its port) and as its admin socket reports it."""

    socket_path: Path | None = None
    names: dict[str, LiveServer] | None = None  # the config's server names (web1…) → server

    def stats(self) -> dict[str, dict[str, str]]:
        """`show stat` of the backend's servers, by server name (`status`: UP/DOWN…; `scur`: sessions now)."""
        with socket.socket(socket.AF_UNIX) as admin:
            admin.settimeout(5)
            admin.connect(str(self.socket_path))
            admin.sendall(b"show stat\n")
            chunks = []
            while chunk := admin.recv(65536):
                chunks.append(chunk)
        text = b"".join(chunks).decode().removeprefix("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {row["svname"]: row for row in rows if row["pxname"] == BACKEND and row["svname"] in self.names}

    def sessions(self) -> dict[int, int]:
        """Current sessions HAProxy holds to each server, by the server process's pid."""
        return {self.names[name].pid: int(row["scur"]) for name, row in self.stats().items()}

    def status(self) -> dict[int, str]:
        return {self.names[name].pid: row["status"] for name, row in self.stats().items()}


@pytest.fixture
def haproxy(request):
    """`haproxy(servers) -> Balancer`: the shipped config in front of `servers` (three, web1..web3)."""
    started: list[Balancer] = []
    workdir = Path(tempfile.mkdtemp(prefix="bros-haproxy-"))

    def start(servers: list[LiveServer]) -> Balancer:
        assert len(servers) == 3, "deploy/haproxy.cfg lists three server processes"
        port = free_port()
        socket_path = workdir / "admin.sock"
        env = {
            **os.environ,
            "BROS_BIND": f"127.0.0.1:{port}",
            "BROS_HOST": "127.0.0.1",
            "BROS_HAPROXY_SOCKET": str(socket_path),
            "BROS_HAPROXY_LOG": "stdout",
            "BROS_HAPROXY_UNPRIVILEGED": "1",
            "BROS_HAPROXY_MAXCONN": "2000",  # within a test machine's file limit
            **{f"BROS_WEB{i}": f"127.0.0.1:{server.port}" for i, server in enumerate(servers, 1)},
        }
        log_path = workdir / "haproxy.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [str(HAPROXY), "-db", "-f", str(CONFIG)],  # -db: foreground, no daemon
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        names = {f"web{i}": server for i, server in enumerate(servers, 1)}
        balancer = Balancer("haproxy", port, process, log_path, env, socket_path=socket_path, names=names)
        started.append(balancer)
        deadline = time.monotonic() + READY_TIMEOUT
        status = None
        while time.monotonic() < deadline:
            if not balancer.alive():
                raise RuntimeError(f"haproxy exited with {process.returncode}:\n{balancer.log()}")
            with contextlib.suppress(OSError):
                status = balancer.status()
                if sorted(status.values()) == ["UP"] * 3:
                    return balancer
            time.sleep(0.1)
        raise TimeoutError(f"haproxy did not find every server up in {READY_TIMEOUT}s: {status}\n{balancer.log()}")

    yield start

    for balancer in started:
        with contextlib.suppress(Exception):
            balancer.stop()
    report = getattr(request.node, "rep_call", None)
    if report is None or report.failed:
        for balancer in started:
            print(f"\n===== haproxy pid {balancer.pid} port {balancer.port} (exit {balancer.process.returncode}) =====")
            print(balancer.log()[-20000:])
    with contextlib.suppress(OSError):
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()


def pytest_terminal_summary(terminalreporter, config):
    """The scenario's line (events, clients, spread, retries), unless the chaos suite's summary prints it."""
    from tests.chaos import conftest as chaos_conftest

    if config.pluginmanager.is_registered(chaos_conftest):
        return  # tests/chaos/conftest.py prints every scenario, this one included
    scenarios = [s for s in chaos_conftest.RESULTS if s.name.startswith("test_haproxy")]
    if scenarios:
        terminalreporter.section("scale-out: events per scenario")
        for scenario in scenarios:
            terminalreporter.write_line(scenario.summary())
