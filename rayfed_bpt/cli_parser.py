"""How ``rayfed-bpt`` commands are declared and parsed (``rayfed_bpt.cli`` holds them).

A command is its handler with its arguments as decorators right above it (click's
shape, on argparse so that ``--set a=1 b=2`` takes several values); options that
set config keys are derived from the config schema (``schema_options``).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable

GROUPS = {
    "data": "prepare, partition and inspect Arrow datasets",
    "backbone": "pre-train or probe the frozen backbone",
}
_COMMANDS: dict[str, Callable] = {}  # "data partition" -> handler (with .cli_args)


def command(name: str, help: str, description: str | None = None) -> Callable:
    """Register ``fn(args)`` as ``rayfed-bpt NAME`` (a space nests it under a group)."""

    def deco(fn: Callable) -> Callable:
        fn.cli_help, fn.cli_description = help, description or help
        fn.__dict__.setdefault("cli_args", [])
        _COMMANDS[name] = fn
        return fn

    return deco


def arg(*flags: str, **kw) -> Callable:
    """One argparse argument of the command below (in reading order)."""

    def deco(fn: Callable) -> Callable:
        fn.__dict__.setdefault("cli_args", []).insert(0, (flags, kw))
        return fn

    return deco


def _options_of(schema: type, skip: tuple[str, ...]) -> list[tuple[tuple, dict]]:
    hints = typing.get_type_hints(schema)
    out = []
    for f in dataclasses.fields(schema):
        if f.name in skip:
            continue
        tp = hints[f.name]
        scalar = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        kind = {"type": scalar[0]}
        if scalar[0] is bool:
            kind = {"action": "store_true"}  # the schema's flags default to false
        elif scalar[0] is list or typing.get_origin(scalar[0]) is list:
            item = typing.get_args(scalar[0]) or (float,)  # a bare list: of numbers
            kind = {"type": item[0], "nargs": "+"}
        out.append(((f"--{f.name.replace('_', '-')}",),
                    {**kind, "default": f.default, "dest": f.name,
                     "help": f"{f.metadata.get('help', '')} (default: {f.default})"}))
    return out


def schema_options(schema: type, skip: tuple[str, ...] = ()) -> Callable:
    """``--kebab-name`` options for the fields of config schema ``schema``."""

    def deco(fn: Callable) -> Callable:
        fn.__dict__.setdefault("cli_args", [])[:0] = _options_of(schema, skip)
        return fn

    return deco


def with_args(*decorators: Callable) -> Callable:
    """Apply shared argument decorators (lists of them too) in reading order."""

    def deco(fn: Callable) -> Callable:
        flat = [d for x in decorators for d in (x if isinstance(x, list) else [x])]
        for d in reversed(flat):
            fn = d(fn)
        return fn

    return deco


def build_parser() -> argparse.ArgumentParser:
    """The parser of every registered command (groups from the names' first words)."""
    p = argparse.ArgumentParser(
        prog="rayfed-bpt",
        description="Personalized federated learning on Ray; flagship: pFedBayesPT.")
    top = p.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, fn in _COMMANDS.items():
        *group, leaf = name.split()
        where = top
        if group:
            g = group[0]
            if g not in groups:
                gp = top.add_parser(g, help=GROUPS[g], description=GROUPS[g][0].upper()
                                    + GROUPS[g][1:] + ".")
                groups[g] = gp.add_subparsers(dest=f"{g}_command", required=True)
            where = groups[g]
        sp = where.add_parser(leaf, help=fn.cli_help, description=fn.cli_description)
        for flags, kw in fn.cli_args:
            sp.add_argument(*flags, **kw)
        sp.set_defaults(func=fn)
    return p


# ----- arguments several commands share ------------------------------------------------
config_args = [
    arg("--config", help="YAML config file"),
    arg("--set", nargs="*", metavar="KEY=VALUE", default=[],
        help="dotted overrides, e.g. algorithm.options.beta=1e-3 train.rounds=20 "
        "(every key: rayfed-bpt config --reference)"),
]
address_arg = arg("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
import_arg = arg("--import", dest="imports", action="append", default=[], metavar="MODULE",
                 help="import MODULE first: the algorithms, partitioners and importers it "
                 "registers become usable by name (repeatable; a run's config keeps them "
                 "under `plugins`; docs/extending.md)")


def no_ray_stats() -> None:
    """Ray's usage statistics off unless the user turned them on (nothing leaves the machine)."""
    import os

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
