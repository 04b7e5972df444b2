"""Algorithms by name. Each algorithm registers itself in its own file (timm's
``@register_model``), and an ablation is a named preset of its options written
beside the class, so adding an algorithm is adding one file — in this package or in a plugin
(``rayfed_bpt.plugins``: a module named in ``plugins`` or an entry point)."""

from __future__ import annotations

from collections.abc import Callable

from .. import plugins
from ..config import from_dict
from ..errors import ConfigError

_REGISTRY: dict[str, tuple[type, dict]] = {}


def register_algorithm(name: str | None = None, **preset) -> Callable[[type], type]:
    """Class decorator: register ``cls`` as ``name`` (default ``cls.name``), with
    ``preset`` options (an ablation). Stack it to register presets of one class."""

    def add(cls: type) -> type:
        key = name or cls.name
        plugins.record("algorithms", key, cls)  # a name another class holds is refused
        _REGISTRY[key] = (cls, preset)
        return cls

    return add


def list_algorithms() -> list[str]:
    """Every registered name: the built-ins, then those of plugins."""
    plugins.discover()
    return list(_REGISTRY)


def lookup(name: str) -> tuple[type, dict]:
    if name not in _REGISTRY:
        plugins.discover()  # an entry point may bring it
    if name not in _REGISTRY:
        raise ConfigError(f"unknown algorithm.name {name!r}; allowed: {list_algorithms()}")
    return _REGISTRY[name]


def algorithm_options(name: str, options: dict | None) -> dict:
    """The preset merged with ``options``, validated against the algorithm's Options."""
    cls, preset = lookup(name)
    merged = {**preset, **(options or {})}
    from_dict(cls.Options, merged, f"algorithm.options ({name})")
    return merged
