"""The deploy files start the server processes exactly as the tests do (the production command line)."""

from __future__ import annotations

import re
import shlex

from tests.live.conftest import PROJECT_ROOT, _command

DEPLOY = PROJECT_ROOT / "deploy"


def uvicorn_arguments(command_line: str, port_placeholder: str) -> list[str]:
    """The arguments after `uvicorn`, the port placeholder written as PORT."""
    words = shlex.split(command_line.replace(port_placeholder, "PORT"))
    return words[[word.endswith("uvicorn") for word in words].index(True) + 1 :]


TESTED = _command("uvicorn", 0)[3:-1] + ["PORT"]  # what the live, chaos and scale-out tests run


def test_deploy_files_procfile_web_line_is_the_tested_command_line():
    """The Procfile's web process is the command line the tests run, on $PORT."""
    (web,) = [line for line in (DEPLOY / "Procfile").read_text().splitlines() if line.startswith("web:")]
    assert uvicorn_arguments(web.removeprefix("web:"), "$PORT") == TESTED


def test_deploy_files_systemd_web_unit_is_the_tested_command_line():
    """The templated web unit runs the command line the tests run, on the instance's port."""
    unit = (DEPLOY / "systemd" / "bros-web@.service").read_text()
    (exec_start,) = re.findall(r"^ExecStart=(.+)$", unit, flags=re.MULTILINE)
    assert uvicorn_arguments(exec_start, "%i") == TESTED


def test_deploy_files_readme_production_command_runs_the_tested_application_and_protocol():
    """README's production command names the same application and WebSocket protocol class."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    (command,) = re.findall(r"`(uvicorn bros\.asgi:application [^`]+)`", readme)
    assert uvicorn_arguments(command, "8000")[:3] == TESTED[:3]


def test_deploy_files_run_exactly_one_beat():
    """One beat line in the Procfile, and the beat unit is not a template (no instances to multiply)."""
    procfile = (DEPLOY / "Procfile").read_text().splitlines()
    assert [line.split(":")[0] for line in procfile if "celery" in line and " beat" in line] == ["beat"]
    units = sorted(path.name for path in (DEPLOY / "systemd").glob("*beat*"))
    assert units == ["bros-beat.service"]
