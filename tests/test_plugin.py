"""A third-party representation, once pip-installed, is listed and runs through `run` like a built-in."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

EXAMPLE = Path(__file__).parent.parent / "examples" / "regression_plugin"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(EXAMPLE)], check=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")])))
    return env


def _heatbench(env, *args):
    return subprocess.run([sys.executable, "-m", "heatbench", *args], env=env, capture_output=True, text=True)


def test_installed_plugin_is_listed_with_its_origin(plugin_env):
    listed = _heatbench(plugin_env, "list")
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if line.startswith("regression"))
    assert "heatbench-regression" in line and "heatbench_regression:Regression" in line
    assert any(line.startswith("heatmap") for line in listed.stdout.splitlines())


def test_installed_plugin_runs_through_the_main_job(plugin_env, tmp_path, mouse_mini):
    finished = _heatbench(plugin_env, "run", "--repr", "regression", "--res", "64", "--epochs", "1",
                          "--batch-size", "4", "--data", str(mouse_mini), "--out", str(tmp_path),
                          "--name", "plugin", "--checkpoint-dir", str(tmp_path / "ck"), "--quiet")
    assert finished.returncode == 0, finished.stderr
    table = pd.read_csv(tmp_path / "plugin" / "table.csv")
    assert list(table["representation"]) == ["mean pose", "regression"]
    assert table["mean_error_input_px"].notna().all()
