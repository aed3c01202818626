"""The representation registry: built-ins and plugins arrive through one entry-point group.

The entry name is the lookup name (``--repr NAME``). Entry points are loaded once, lazily, on the first
lookup; a plugin that fails to import is reported with a warning and left out instead of breaking every
other representation. ``register`` is also public, for representations defined in a script or a test.
"""
from __future__ import annotations

import logging
from importlib.metadata import entry_points

from .errors import HeatbenchError

ENTRY_POINT_GROUP = "heatbench.representations"
log = logging.getLogger(__name__)

_classes: dict[str, type] = {}
_origins: dict[str, str] = {}
_loaded = False


class UnknownRepresentationError(HeatbenchError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; a user-facing error should not
        return self.args[0]


def register(name: str, cls: type, origin: str = "registered at run time") -> type:
    """Add ``cls`` under ``name``; a name can be registered once."""
    if name in _classes and _classes[name] is not cls:
        raise ValueError(f"representation {name!r} is already registered (from {_origins[name]})")
    _classes[name] = cls
    _origins[name] = origin
    cls.name = name
    return cls


def _load_entry_points() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        distribution = entry.dist.name if entry.dist is not None else "unknown distribution"
        try:
            cls = entry.load()
        except Exception as error:  # a broken plugin must not take the built-ins down with it
            log.warning("representation plugin %r (%s) failed to load: %s", entry.name, entry.value, error)
            continue
        register(entry.name, cls, origin=f"{distribution}: {entry.value}")


def available() -> list[str]:
    """Sorted names of every registered representation, plugins included."""
    _load_entry_points()
    return sorted(_classes)


def origins() -> dict[str, str]:
    """Where each registered representation came from (distribution and object path)."""
    _load_entry_points()
    return dict(sorted(_origins.items()))


def get(name: str) -> type:
    """The class registered under ``name``; an unknown name raises an error listing the known ones."""
    _load_entry_points()
    if name not in _classes:
        known = ", ".join(sorted(_classes)) or "none (is heatbench installed? pip install -e .)"
        raise UnknownRepresentationError(f"unknown representation {name!r}; available: {known}")
    return _classes[name]
