"""The representation registry: built-ins and plugins arrive through one entry-point group.

The entry name is the lookup name (``--repr NAME``). Entry points are loaded once, lazily, on the first
lookup. A plugin that fails to import, or whose class breaks the ``Representation`` contract (not a
subclass, an abstract method left, no ``floor_tolerance_px``, a ``config_class`` that is no dataclass), is
reported with a one-line warning and left out of ``available()`` instead of breaking every other
representation; naming it raises a ``PluginError`` with the same line. ``register`` and ``unregister`` are
public, for representations defined in a script or a test.
"""
from __future__ import annotations

import dataclasses
import logging
from importlib.metadata import entry_points

from .errors import HeatbenchError

ENTRY_POINT_GROUP = "heatbench.representations"
log = logging.getLogger(__name__)

_classes: dict[str, type] = {}
_origins: dict[str, str] = {}
_broken: dict[str, str] = {}  # name -> why it cannot be used, in one line
_loaded = False


class UnknownRepresentationError(HeatbenchError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; a user-facing error should not
        return self.args[0]


class PluginError(HeatbenchError):
    """A registered representation that cannot be used: it failed to import or breaks the contract."""


def contract_problem(cls) -> str | None:
    """What keeps ``cls`` from being built as a representation, in a phrase; None when nothing does."""
    from .representation import Representation  # here, not above: representation imports the registry

    if not (isinstance(cls, type) and issubclass(cls, Representation)):
        return "is not a subclass of heatbench.Representation"
    if cls.__abstractmethods__:
        return f"does not implement {', '.join(sorted(cls.__abstractmethods__))}"
    if not hasattr(cls, "floor_tolerance_px"):
        return "sets no floor_tolerance_px"
    if not dataclasses.is_dataclass(cls.config_class):
        return f"has a config_class ({cls.config_class!r}) that is not a dataclass"
    return None


def register(name: str, cls: type, origin: str = "registered at run time") -> type:
    """Add ``cls`` under ``name``; a name can be registered once, and only a class that keeps the contract."""
    if name in _classes and _classes[name] is not cls:
        raise ValueError(f"representation {name!r} is already registered (from {_origins[name]})")
    problem = contract_problem(cls)
    if problem is not None:
        raise PluginError(f"representation {name!r} ({_qualified(cls)}, {origin}) {problem}")
    _classes[name] = cls
    _origins[name] = origin
    cls.name = name
    return cls


def unregister(name: str) -> None:
    """Remove ``name`` (a representation registered at run time, e.g. by a test); unknown names are ignored."""
    _classes.pop(name, None)
    _origins.pop(name, None)
    _broken.pop(name, None)


def _qualified(cls) -> str:
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', repr(cls))}"


def _load_entry_points() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        distribution = entry.dist.name if entry.dist is not None else "unknown distribution"
        origin = f"{distribution}: {entry.value}"
        try:  # a broken plugin must not take the built-ins down with it
            register(entry.name, entry.load(), origin=origin)
        except PluginError as error:
            _broken[entry.name] = str(error)
        except Exception as error:
            _broken[entry.name] = f"representation {entry.name!r} ({origin}) failed to load: " \
                                  f"{type(error).__name__}: {error}"
        if entry.name in _broken:
            log.warning("%s; left out", _broken[entry.name])


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
    if name in _broken:
        raise PluginError(_broken[name])
    if name not in _classes:
        known = ", ".join(sorted(_classes)) or "none (is heatbench installed? pip install -e .)"
        raise UnknownRepresentationError(f"unknown representation {name!r}; available: {known}")
    return _classes[name]
