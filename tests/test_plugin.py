"""A third-party representation, once pip-installed, is listed and runs through `run` like a built-in; the
README's plugin is complete as written; a broken plugin is left out politely."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from heatbench import Representation, build_representation, cli, registry

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "regression_plugin"


def readme_plugin() -> dict[str, str]:
    """The README's plugin section, copied out: its pyproject.toml and its Python module, by file name."""
    section = ROOT.joinpath("README.md").read_text().split("## Writing a plugin", 1)[1].split("\n## ", 1)[0]
    blocks = dict(re.findall(r"```(toml|python)\n(.*?)```", section, re.S))
    module = re.search(r'py-modules = \["(\w+)"\]', blocks["toml"]).group(1)
    return {"pyproject.toml": blocks["toml"], f"{module}.py": blocks["python"]}


def test_the_example_plugin_is_the_readmes_file_for_file():
    for name, text in readme_plugin().items():
        assert EXAMPLE.joinpath(name).read_text() == text, name


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """An environment with the README's plugin, as a reader would write it out and pip-install it."""
    source, target = tmp_path_factory.mktemp("plugin"), tmp_path_factory.mktemp("site")
    for name, text in readme_plugin().items():
        source.joinpath(name).write_text(text)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True)
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


class _Entry:
    """A stand-in for an installed entry point of the representations group."""

    def __init__(self, name, obj):
        self.name, self.value, self.dist, self._obj = name, f"broken_plugin:{name.title()}", None, obj

    def load(self):
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


def _noop(self, *args):
    return None


HOOKS = dict.fromkeys(("output_size", "build_head", "encode", "loss", "decode", "flip_back", "ideal_outputs"), _noop)
NoDecode = type("NoDecode", (Representation,), {name: hook for name, hook in HOOKS.items() if name != "decode"}
                | {"floor_tolerance_px": 0.0})
NoTolerance = type("NoTolerance", (Representation,), HOOKS)
Complete = type("Complete", (Representation,), {**HOOKS, "floor_tolerance_px": 0.0})
BROKEN = {"nodecode": ("does not implement decode", NoDecode),
          "notolerance": ("sets no floor_tolerance_px", NoTolerance),
          "notarepr": ("is not a subclass of heatbench.Representation", object),
          "crashes": ("failed to load: ImportError: no module named torchvision_x", ImportError(
              "no module named torchvision_x"))}


@pytest.fixture
def broken_plugins(monkeypatch):
    entries = [_Entry(name, obj) for name, (_, obj) in BROKEN.items()]
    builtins = list(registry.entry_points(group=registry.ENTRY_POINT_GROUP))
    monkeypatch.setattr(registry, "entry_points", lambda group: builtins + entries)
    for state in ("_classes", "_origins", "_broken"):
        monkeypatch.setattr(registry, state, {})
    monkeypatch.setattr(registry, "_loaded", False)


def test_a_broken_plugin_is_left_out_of_every_listing_with_a_one_line_warning(broken_plugins, caplog):
    names = registry.available()
    assert not set(BROKEN) & set(names) and "heatmap" in names
    for name, (problem, _) in BROKEN.items():
        warning = next(record.getMessage() for record in caplog.records if f"'{name}'" in record.getMessage())
        assert problem in warning and "\n" not in warning


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_naming_a_broken_plugin_exits_2_with_one_line_that_names_it(broken_plugins, capsys, name):
    assert cli.main(["floor", "--repr", name, "--res", "32"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"'{name}'" in error and BROKEN[name][0] in error


def test_a_plugin_whose_own_code_fails_on_build_gets_one_line_naming_its_class():
    class Crashes(Complete):
        def __init__(self, config, input_size, num_keypoints):
            raise AttributeError("'NoConfig' object has no attribute 'sigma'")

    registry.register("crashes_on_build", Crashes)
    try:
        with pytest.raises(registry.PluginError, match=r"crashes_on_build \(.*Crashes\) could not be built at "
                                                       r"32x32: AttributeError: 'NoConfig'"):
            build_representation("crashes_on_build", (32, 32), 3)
    finally:
        registry.unregister("crashes_on_build")
    assert "crashes_on_build" not in registry.available()
