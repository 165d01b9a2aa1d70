"""`dev.py run` gives its children a fresh PROMETHEUS_MULTIPROC_DIR (docs/running.md, "Operations")."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_dev_script():
    spec = importlib.util.spec_from_file_location("dev_script", ROOT / "dev.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fresh_metrics_dir_is_created_and_emptied_of_the_last_runs_metric_files(tmp_path):
    dev = load_dev_script()
    folder = tmp_path / "prometheus"
    assert dev.fresh_metrics_dir(folder) == folder and folder.is_dir()
    (folder / "counter_123.db").write_bytes(b"old")
    (folder / "README").write_text("not ours to delete")
    dev.fresh_metrics_dir(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["README"]


def test_dev_metrics_dir_lives_under_var():
    dev = load_dev_script()
    assert dev.METRICS_DIR == dev.VAR / "prometheus"
