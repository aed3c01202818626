"""Writing result directories: tables, JSON records and provenance, all or nothing.

Every writer builds its files in a hidden temporary sibling directory and renames it into place at the end,
so an interrupted or failed command leaves no half-written results; a finished run of the same name is
replaced only once the new one is complete.
"""
from __future__ import annotations

import contextlib
import json
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


def _cell(row: dict, key: str):
    """A Markdown cell: ``mean ± std`` where the row has a spread over seeds for ``key``; blank without ``key``."""
    value, spread = row.get(key), row.get(f"{key}_std")
    return f"{value:.4g} ± {spread:.2g}" if spread is not None else value


def write_table(directory: Path, rows: list[dict], headers: dict[str, str], preface: str = "",
                floatfmt: str = ".4g") -> str:
    """Write ``table.csv`` (every scalar field of the rows) and ``table.md`` (``preface``, then the
    ``headers`` columns, renamed, as ``mean ± std`` where a ``<key>_std`` field exists). Returns the table.
    """
    scalar_keys = [key for key in dict.fromkeys(k for row in rows for k in row)
                   if all(not isinstance(row.get(key), (list, tuple, dict)) for row in rows)]
    pd.DataFrame(rows, columns=scalar_keys).to_csv(directory / "table.csv", index=False)
    shown = [{title: _cell(row, key) for key, title in headers.items()} for row in rows]  # every row, every column
    markdown = tabulate(shown, headers="keys", tablefmt="github", floatfmt=floatfmt)
    (directory / "table.md").write_text(preface + markdown + "\n")
    return markdown


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
