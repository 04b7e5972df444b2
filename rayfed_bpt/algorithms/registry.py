"""Algorithms by name. Each algorithm registers itself in its own file (timm's
``@register_model``), and an ablation is a named preset of its options written
beside the class, so adding an algorithm is adding one file — in this package or in a plugin
(``rayfed_bpt.plugins``: a module named in ``plugins`` or an entry point)."""

from __future__ import annotations

from collections.abc import Callable

from .. import plugins
from ..config import from_dict
from ..errors import ConfigError

_REGISTRY: plugins.Registry[tuple[type, dict]] = plugins.Registry("algorithms")


def register_algorithm(name: str | None = None, **preset) -> Callable[[type], type]:
    """Class decorator: register ``cls`` as ``name`` (default ``cls.name``), with
    ``preset`` options (an ablation). Stack it to register presets of one class."""

    def add(cls: type) -> type:
        _REGISTRY.add(name or cls.name, (cls, preset), cls)  # a name that is taken: refused
        return cls

    return add


def list_algorithms() -> list[str]:
    """Every registered name: the built-ins, then those of plugins."""
    return _REGISTRY.names()


def lookup(name: str) -> tuple[type, dict]:
    found = _REGISTRY.get(name)
    if found is None:
        raise ConfigError(f"unknown algorithm.name {name!r}; allowed: {list_algorithms()}")
    return found


def preset_of(name: str) -> dict:
    """The options a registered preset fixes ({} for a plain algorithm or an unregistered
    class)."""
    found = _REGISTRY.get(name)
    return found[1] if found else {}


def algorithm_options(name: str, options: dict | None) -> dict:
    """The preset merged with ``options``, validated against the algorithm's Options."""
    cls, preset = lookup(name)
    merged = {**preset, **(options or {})}
    from_dict(cls.Options, merged, f"algorithm.options ({name})")
    return merged
