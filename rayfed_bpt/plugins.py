"""Plugins: algorithms, partitioners and importers registered from outside the package.

A researcher's own package registers with the same decorators the built-ins use
(``register_algorithm``, ``register_partitioner``, ``register_importer``); this
module only makes sure its code is imported, in every process that needs it:

- ``plugins: [my_pkg.my_method]`` in a config (``--import`` on the command line
  adds to it). The config travels to the driver actor, the client actors, Tune
  trials and suite tasks, and each imports the modules it names
  (``import_plugins``) before it looks anything up; a resumed run reads them
  from its own config.yaml.
- entry points in the user's ``pyproject.toml`` (groups ``rayfed_bpt.algorithms``,
  ``rayfed_bpt.partitioners``, ``rayfed_bpt.importers``): loaded once per process,
  the first time a name is not found among the registered ones or a list of
  names is asked for (``discover``).

Every registration records where it came from (``origin``), so that
``rayfed-bpt list`` can say so and a name clash can name both sides. Ground
floor: no torch, no Ray, no imports from the rest of the package but errors.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import warnings
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from .errors import ConfigError

KINDS = ("algorithms", "partitioners", "importers", "pools")
#: entry-point group of each kind, e.g. [project.entry-points."rayfed_bpt.algorithms"]
GROUPS = {kind: f"rayfed_bpt.{kind}" for kind in KINDS}
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

_owners: dict[tuple[str, str], tuple[str, str]] = {}  # (kind, name) -> (module, qualname)
_entry_modules: dict[str, str] = {}  # module loaded by an entry point -> "dist (entry point)"
_broken: dict[tuple[str, str], str] = {}  # (kind, entry-point name) -> why it failed
_discovered = False


def check_module_names(modules: Iterable[str], key: str = "plugins") -> list[str]:
    """``modules`` as a list, each a dotted module name (not a path), else a ConfigError."""
    out = []
    for m in modules:
        if not isinstance(m, str) or not _MODULE_NAME.match(m):
            raise ConfigError(f"{key}: {m!r} is not a module name; write a dotted import path "
                              "such as my_pkg.my_method (not a file path)")
        out.append(m)
    return out


def import_plugins(modules: Iterable[str]) -> None:
    """Import each module (registering what it defines); a module already imported is
    not run again. The current folder is searched last, as ``python -m`` would (the
    ``rayfed-bpt`` script's own path does not hold it; Ray's workers get the driver's
    folder too). A module that cannot be imported is a ConfigError that says how to
    make it importable here and on a cluster."""
    names = check_module_names(modules)
    if names and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and (name == e.name or name.startswith(e.name + ".")):
                raise ConfigError(
                    f"plugin module {name!r} cannot be imported here ({e}). Install its "
                    "package (pip install -e PATH), put its folder on PYTHONPATH or run "
                    "from that folder; on a cluster ship it with `ray job submit "
                    "--working-dir` or runtime_env py_modules.") from None
            raise ConfigError(f"plugin module {name!r} needs {e.name!r}, which is not "
                              f"installed here ({e}): install it (and on a cluster, add it "
                              "to the job's runtime_env pip).") from None


def discover() -> None:
    """Load every entry point of the three groups, once per process. One that fails to
    load is skipped with a warning (a broken package must not stop runs of other
    methods); asking for its name is then an error that says why (``broken``)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for kind, group in GROUPS.items():
        for ep in entry_points(group=group):
            where = f"{ep.dist.name if ep.dist else '?'} (entry point {group}:{ep.name})"
            _entry_modules[ep.module] = where
            try:
                ep.load()
            except Exception as e:  # noqa: BLE001 - whatever the package's import raises
                _broken[(kind, ep.name)] = (f"the {kind[:-1]} {ep.name!r} of {where} cannot "
                                            f"be loaded ({type(e).__name__}: {e}); fix or "
                                            "uninstall that package")
                warnings.warn(_broken[(kind, ep.name)], stacklevel=2)


def broken(kind: str, name: str) -> str | None:
    """Why the entry point that would have registered ``name`` failed to load, if one did."""
    return _broken.get((kind, name))


def record(kind: str, name: str, obj: object) -> None:
    """Note that ``obj`` is registered as ``name``; refuse a name that another object
    holds. The same object, or one of the same module and qualified name (a module
    imported again), may register again."""
    owner = (getattr(obj, "__module__", "?"), getattr(obj, "__qualname__", repr(obj)))
    held = _owners.get((kind, name))
    if held is not None and held != owner:
        raise ConfigError(
            f"{kind[:-1]} {name!r} of {_origin_of(owner[0])} ({owner[1]}) clashes with the "
            f"{kind[:-1]} of that name from {_origin_of(held[0])} ({held[1]}): register "
            "yours under another name")
    _owners[(kind, name)] = owner


def origin(kind: str, name: str) -> str:
    """Where ``name`` was registered: "built-in", a module, or a distribution's entry point."""
    held = _owners.get((kind, name))
    return _origin_of(held[0]) if held else "?"


def _origin_of(module: str) -> str:
    if module == "rayfed_bpt" or module.startswith("rayfed_bpt."):
        return "built-in"
    top = next((d for m, d in _entry_modules.items()
                if module == m or module.startswith(m + ".")), None)
    return f"{module} from {top}" if top else f"module {module}"


T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> entries of one kind (algorithms, partitioners, importers): each name held
    by one object (``record``), plugins' entry points loaded on the first miss or list."""

    def __init__(self, kind: str):
        assert kind in KINDS, kind
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T, owner: object) -> None:
        """Register ``entry`` (made from ``owner``, a class or function) as ``name``."""
        record(self.kind, name, owner)
        self._entries[name] = entry

    def names(self) -> list[str]:
        """Every registered name: the built-ins first, then plugins'."""
        discover()
        return list(self._entries)

    def get(self, name: str) -> T | None:
        """The entry of ``name``; None if none is registered (a ConfigError when an
        installed package's entry point for it failed to load: that is why)."""
        if name not in self._entries:
            discover()  # an entry point may bring it
            why = broken(self.kind, name)
            if name not in self._entries and why:
                raise ConfigError(why)
        return self._entries.get(name)
