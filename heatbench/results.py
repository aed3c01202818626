"""Writing result directories: tables, JSON records and provenance, all or nothing.

Every writer builds its files in a hidden temporary sibling directory and renames it into place at the end,
so an interrupted or failed command leaves no half-written results; a finished run of the same name is
replaced only once the new one is complete.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Iterator

import pandas as pd
import torch
from tabulate import tabulate

LIBRARIES = ("heatbench", "torch", "numpy", "scipy", "pandas", "pycocotools")
# a run directory's arrays: the validation targets with every trained model's predictions, and apart from
# them the baselines' (the mean pose), which no network made
PREDICTIONS = "predictions.npz"
BASELINE_PREDICTIONS = "baselines.npz"


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``target`` only if the block finishes without an error."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, retired / target.name)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, target)


def git_commit() -> str:
    """The source tree's commit, with ``-dirty`` when tracked files differ from it; ``unknown`` outside git."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _program() -> str:
    """How heatbench was started, as a user would type it."""
    program = Path(sys.argv[0]).name
    return "python -m heatbench" if program == "__main__.py" else program


def provenance(device: torch.device) -> dict:
    """Library versions, device, platform, git commit and command line, recorded with every result."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "command": " ".join([_program(), *sys.argv[1:]]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": versions,
        "device": device_description(device),
        "git_commit": git_commit(),
    }


SIGNIFICANT_DIGITS = 3
COUNT_KEYS = ("head_params", "total_params")  # parameter counts, written 15.4 M
PERCENT_KEYS = ("last_fifth_change",)  # relative changes, written +0.4%


def format_number(value: float, decimals: int | None = None) -> str:
    """``value`` to SIGNIFICANT_DIGITS (or to ``decimals`` places): 2.24, 0.424, 1069; tiny values as 1.97e-07."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    if decimals is None:
        if abs(value) < 1e-3:
            return f"{value:.{SIGNIFICANT_DIGITS - 1}e}"
        decimals = max(0, SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def format_count(value: float) -> str:
    """A count for people: 4369 -> 4.37 k, 15381000 -> 15.4 M."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{format_number(value / scale)} {unit}"
    return f"{value:g}"


def format_cell(row: dict, key: str) -> str:
    """A Markdown cell: numbers to SIGNIFICANT_DIGITS, ``mean ± std`` (the spread to the mean's decimals)
    where the row has a ``<key>_std``, parameter counts with a unit, relative changes in percent to one
    decimal; blank without ``key``."""
    value, spread = row.get(key), row.get(f"{key}_std")
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if key in COUNT_KEYS:
        return format_count(value)
    if key in PERCENT_KEYS:
        return f"{100 * value:+.1f}%" + (f" ± {100 * spread:.1f}%" if spread is not None else "")
    if isinstance(value, int) and spread is None:
        return str(value)
    text = format_number(value)
    if spread is None:
        return text
    decimals = len(text.split(".")[1]) if "." in text and "e" not in text else None
    return f"{text} ± {format_number(spread, decimals)}"


def write_table(directory: Path, rows: list[dict], headers: dict[str, str], preface: str = "") -> str:
    """Write ``table.csv`` (every scalar field of the rows, full precision) and ``table.md`` (``preface``,
    then the ``headers`` columns, renamed, formatted by ``format_cell``). Returns the table."""
    scalar_keys = [key for key in dict.fromkeys(k for row in rows for k in row)
                   if all(not isinstance(row.get(key), (list, tuple, dict)) for row in rows)]
    pd.DataFrame(rows, columns=scalar_keys).to_csv(directory / "table.csv", index=False)
    shown = [{title: format_cell(row, key) for key, title in headers.items()} for row in rows]
    markdown = tabulate(shown, headers="keys", tablefmt="github", disable_numparse=True)
    (directory / "table.md").write_text(preface + markdown + "\n")
    return markdown


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
