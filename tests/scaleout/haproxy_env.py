"""How HAProxy runs the shipped `deploy/haproxy.cfg` on one machine: shared by the scale-out tests
(`tests/scaleout/conftest.py`) and the shift benchmark (`bench/shift.py`).

No pytest or Django import here: the benchmark's runner imports this module too.
"""

from __future__ import annotations

import csv
import io
import socket
from pathlib import Path

HAPROXY = Path("/usr/sbin/haproxy")
CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"
BACKEND = "bros_web"


def haproxy_argv() -> list[str]:
    """HAProxy in the foreground (`-db`, no daemon) on the shipped config."""
    return [str(HAPROXY), "-db", "-f", str(CONFIG)]


def haproxy_env(port: int, socket_path: Path, servers: list[str], maxconn: int) -> dict[str, str]:
    """The config's variables: listen on 127.0.0.1:`port`, admin socket, log to stdout, no privilege
    drop, and `servers` ("host:port", three: web1..web3) behind it."""
    assert len(servers) == 3, "deploy/haproxy.cfg lists three server processes"
    return {
        "BROS_BIND": f"127.0.0.1:{port}",
        "BROS_HOST": "127.0.0.1",
        "BROS_HAPROXY_SOCKET": str(socket_path),
        "BROS_HAPROXY_LOG": "stdout",
        "BROS_HAPROXY_UNPRIVILEGED": "1",
        "BROS_HAPROXY_MAXCONN": str(maxconn),
        **{f"BROS_WEB{i}": server for i, server in enumerate(servers, 1)},
    }


def show_stat(socket_path: Path) -> dict[str, dict[str, str]]:
    """The admin socket's `show stat` rows of the backend's servers, by server name (web1…)."""
    with socket.socket(socket.AF_UNIX) as admin:
        admin.settimeout(5)
        admin.connect(str(socket_path))
        admin.sendall(b"show stat\n")
        chunks = []
        while chunk := admin.recv(65536):
            chunks.append(chunk)
    text = b"".join(chunks).decode().removeprefix("# ")
    rows = csv.DictReader(io.StringIO(text))
    return {row["svname"]: row for row in rows if row["pxname"] == BACKEND and row["svname"].startswith("web")}
