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
import os
import shutil
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
    http_json,
    live_prefix,
    live_servers,
    pytest_runtest_makereport,
    session_cookie,
)
from tests.scaleout.haproxy_env import HAPROXY, haproxy_argv, haproxy_env, show_stat

NGINX = Path("/usr/sbin/nginx")
NGINX_CONFIG = PROJECT_ROOT / "deploy" / "nginx.conf"
OPENSSL = Path("/usr/bin/openssl")
READY_TIMEOUT = 20.0  # seconds for HAProxy to start and find every server healthy


def running_in_ci() -> bool:
    """Whether this is a CI run (`CI=true`, as CI services and `.ci/run` set it)."""
    return os.environ.get("CI", "").lower() in ("true", "1")


def require(tool: Path, package: str) -> None:
    """Skip the test when `tool` is missing, with the reason; in CI fail it instead.

    A green CI run must mean the scale-out tests ran, not that they were skipped.
    """
    if tool.exists():
        return
    if running_in_ci():
        pytest.fail(f"{tool} is missing: CI must run the scale-out tests (apt-get install {package})")
    pytest.skip(f"{tool} is not installed (apt-get install {package})")


@dataclass(eq=False)
class Balancer(LiveServer):
    """HAProxy as clients see it (a `LiveServer` on its port) and as its admin socket reports it."""

    socket_path: Path | None = None
    names: dict[str, LiveServer] | None = None  # the config's server names (web1…) → server

    def stats(self) -> dict[str, dict[str, str]]:
        """`show stat` of the backend's servers, by server name (`status`: UP/DOWN…; `scur`: sessions now)."""
        return {name: row for name, row in show_stat(self.socket_path).items() if name in self.names}

    def sessions(self) -> dict[int, int]:
        """Current sessions HAProxy holds to each server, by the server process's pid."""
        return {self.names[name].pid: int(row["scur"]) for name, row in self.stats().items()}

    def status(self) -> dict[int, str]:
        return {self.names[name].pid: row["status"] for name, row in self.stats().items()}

    def checked_up(self) -> bool:
        """Whether every server is up by a passed health check (a `GET /healthz` answered 200)."""
        states = [(row["status"], row["check_status"], row["check_code"]) for row in self.stats().values()]
        return states == [("UP", "L7OK", "200")] * 3


def stop_and_report(request, kind: str, started: list[LiveServer]) -> None:
    """Stop the balancers a test started; print their logs if the test failed."""
    for balancer in started:
        with contextlib.suppress(Exception):
            balancer.stop()
    report = getattr(request.node, "rep_call", None)
    if report is None or report.failed:
        for balancer in started:
            print(f"\n===== {kind} pid {balancer.pid} port {balancer.port} (exit {balancer.process.returncode}) =====")
            print(balancer.log()[-20000:])


@pytest.fixture
def haproxy(request):
    """`haproxy(servers) -> Balancer`: the shipped config in front of `servers` (three, web1..web3)."""
    require(HAPROXY, "haproxy")
    started: list[Balancer] = []
    workdir = Path(tempfile.mkdtemp(prefix="bros-haproxy-"))

    def start(servers: list[LiveServer]) -> Balancer:
        port = free_port()
        socket_path = workdir / "admin.sock"
        servers_at = [f"127.0.0.1:{server.port}" for server in servers]
        # maxconn 2000: within a test machine's file limit
        env = {**os.environ, **haproxy_env(port, socket_path, servers_at, maxconn=2000)}
        log_path = workdir / "haproxy.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                haproxy_argv(),
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
                status = {name: (row["status"], row["check_status"]) for name, row in balancer.stats().items()}
                if balancer.checked_up():
                    return balancer
            time.sleep(0.1)
        raise TimeoutError(f"haproxy did not find every server up in {READY_TIMEOUT}s: {status}\n{balancer.log()}")

    yield start

    stop_and_report(request, "haproxy", started)
    with contextlib.suppress(OSError):
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()


@dataclass(eq=False)
class TlsBalancer(LiveServer):
    """nginx as clients see it: `https://` and `wss://` on its TLS port (`http_port`: its plain one)."""

    http_port: int = 0

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/ws/v1/"


def render_nginx(text: str, *, http_port: int, https_port: int, servers: list[LiveServer], cert: Path, key: Path):
    """The shipped nginx.conf with only its addresses and certificate paths replaced (each must be found)."""
    replacements = {
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen [::]:80;": "",
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https_port} ssl http2;",
        "listen [::]:443 ssl http2;": "",
        "/etc/ssl/bros/fullchain.pem": str(cert),
        "/etc/ssl/bros/privkey.pem": str(key),
        **{f"server 127.0.0.1:{8000 + i} ": f"server 127.0.0.1:{server.port} " for i, server in enumerate(servers, 1)},
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"deploy/nginx.conf changed shape: {old!r} found {text.count(old)} times"
        text = text.replace(old, new)
    return text


@pytest.fixture
def nginx(request, monkeypatch):
    """`nginx(servers) -> TlsBalancer`: the shipped nginx.conf (TLS and all) in front of `servers` (three).

    Its certificate is a throw-away self-signed one for 127.0.0.1, trusted by this process through
    SSL_CERT_FILE (urllib and websockets read it when they make their TLS contexts).
    """
    require(NGINX, "nginx")
    require(OPENSSL, "openssl")
    started: list[TlsBalancer] = []
    workdir = Path(tempfile.mkdtemp(prefix="bros-nginx-"))
    workdir.chmod(0o755)  # nginx's workers (another user under root) use the temp folders inside

    def start(servers: list[LiveServer]) -> TlsBalancer:
        assert len(servers) == 3, "deploy/nginx.conf lists three server processes"
        cert, key = workdir / "cert.pem", workdir / "key.pem"
        subprocess.run(
            [str(OPENSSL), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
            + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-days", "1"]
            + ["-keyout", str(key), "-out", str(cert)],
            check=True,
            capture_output=True,
        )
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        http_port, https_port = free_port(), free_port()
        site = render_nginx(
            NGINX_CONFIG.read_text(), http_port=http_port, https_port=https_port, servers=servers, cert=cert, key=key
        )
        (workdir / "bros.conf").write_text(site)
        temp = " ".join(
            f"{kind}_temp_path {workdir / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (workdir / "nginx.conf").write_text(
            f"worker_processes 1;\npid {workdir / 'nginx.pid'};\nerror_log {workdir / 'error.log'} info;\n"
            "events { worker_connections 1024; }\n"
            f"http {{ access_log {workdir / 'access.log'}; {temp} include {workdir / 'bros.conf'}; }}\n"
        )
        log_path = workdir / "error.log"
        process = subprocess.Popen(
            [str(NGINX), "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        balancer = TlsBalancer("nginx", https_port, process, log_path, {}, http_port=http_port)
        started.append(balancer)
        deadline = time.monotonic() + READY_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            if not balancer.alive():
                raise RuntimeError(f"nginx exited with {process.returncode}:\n{balancer.log()}")
            with contextlib.suppress(OSError):
                last = http_json(balancer, "GET", "/healthz")
                if last[0] == 200:
                    return balancer
            time.sleep(0.1)
        raise TimeoutError(f"nginx did not answer /healthz in {READY_TIMEOUT}s: {last}\n{balancer.log()}")

    yield start

    stop_and_report(request, "nginx", started)
    shutil.rmtree(workdir, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, config):
    """The scenario's line (events, clients, spread, retries), unless the chaos suite's summary prints it."""
    from tests.chaos import conftest as chaos_conftest

    if config.pluginmanager.is_registered(chaos_conftest):
        return  # tests/chaos/conftest.py prints every scenario, this one included
    scenarios = [s for s in chaos_conftest.RESULTS if s.name.startswith(("test_haproxy", "test_nginx"))]
    if scenarios:
        terminalreporter.section("scale-out: events per scenario")
        for scenario in scenarios:
            terminalreporter.write_line(scenario.summary())
