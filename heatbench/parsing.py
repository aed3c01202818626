"""The command line's small languages: input sizes (``--res``), config overrides (``--set``), shards (``--shard``)."""
from __future__ import annotations

import ast

from .errors import HeatbenchError


def parse_resolutions(text: str) -> list[tuple[int, int]]:
    """``"64,128,256x192"`` -> [(64, 64), (128, 128), (256, 192)] as (H, W), the field's height-first habit."""
    sizes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) not in (1, 2) or not all(part.isdigit() and int(part) > 0 for part in parts):
            raise HeatbenchError(f"--res: {item.strip()!r} is not a size; expected N or HxW, e.g. 64 or 256x192")
        height, width = int(parts[0]), int(parts[-1])
        sizes.append((height, width))
    return sizes


def size_name(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def parse_overrides(items: list[str], names: list[str]) -> dict[str, dict]:
    """``["simcc.split_ratio=2", "heatmap.decoder=argmax"]`` -> {"simcc": {"split_ratio": 2.0}, ...}."""
    overrides: dict[str, dict] = {name: {} for name in names}
    for item in items:
        key, sep, raw = item.partition("=")
        name, dot, field_name = key.partition(".")
        if not sep or not dot or not field_name:
            raise HeatbenchError(f"--set {item!r}: expected REPRESENTATION.FIELD=VALUE, e.g. heatmap.decoder=argmax")
        if name not in overrides:
            raise HeatbenchError(f"--set {item!r}: {name!r} is not among --repr {','.join(names)}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = {"true": True, "false": False}.get(raw.lower(), raw)
        overrides[name][field_name] = value
    return overrides


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"2/4"`` -> (2, 4): this job runs every 4th (representation, size, seed) triple starting at the 2nd."""
    if text is None:
        return 0, 1
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise HeatbenchError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return int(index), int(count)
