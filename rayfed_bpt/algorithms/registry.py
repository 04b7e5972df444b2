"""Algorithms by name, on the torch side: the class behind a name.

Names, options and presets are declared torch-free in ``rayfed_bpt.catalog`` (the
built-ins) or registered with ``register_algorithm`` in a plugin's own module; here a
built-in's module is imported when a run first needs its class.
"""

from __future__ import annotations

from ..catalog import (
    algorithm_options,
    list_algorithms,
    load_target,
    preset_of,
    register_algorithm,
    spec,
)

__all__ = ["algorithm_options", "list_algorithms", "lookup", "preset_of", "register_algorithm"]


def lookup(name: str) -> tuple[type, dict]:
    """(the class, its preset options) of ``name``."""
    s = spec(name)
    return load_target(s.target), dict(s.preset)
