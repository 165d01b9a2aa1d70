"""The apps import one another only downward (docs/architecture.md)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("bros", "chat", "deliveries", "riders", "realtime", "core")


def lint_imports(project: Path) -> subprocess.CompletedProcess:
    """Run import-linter's contracts of `project`'s pyproject.toml over `project`'s packages."""
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports())"
    env = {**os.environ, "PYTHONPATH": str(project)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True, timeout=120
    )


def test_layers_contract_is_kept():
    """bros > chat > deliveries > riders > realtime > core: no app imports one above it."""
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_layers_contract_catches_an_upward_import(tmp_path):
    """The same contract over a tree where realtime imports deliveries is broken (its tests may)."""
    for package in (*LAYERS, "realtime/tests"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "deliveries" / "selectors.py").write_text("")
    (tmp_path / "realtime" / "tests" / "test_hub.py").write_text("from deliveries import selectors\n")
    (tmp_path / "realtime" / "hub.py").write_text("from deliveries import selectors\n")
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "realtime.hub -> deliveries.selectors" in result.stdout
    assert "realtime.tests" not in result.stdout
