"""Declarative fields: ``knob`` declares a setting once (default, help, allowed values),
``from_dict`` builds a dataclass from a mapping and checks every field by what its knob
declares, ``set_key`` / ``apply_overrides`` write dotted keys.

One validation for every setting there is: the config's sections (``config.py``) and
each algorithm's ``Options`` (built-in ones in ``catalog.py``, plugins' beside their
code). A new setting is one ``knob`` line; its check, its ``--help`` text and its row
in docs/config.md follow from it. Ground floor: no torch, no numpy.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def knob(default: Any = None, help: str = "", factory: Any = None, *,
         choices: tuple | None = None, bounds: str | None = None, path: bool = False) -> Any:
    """A setting: its default (or ``factory``), help text, and what is allowed — one of
    ``choices``, or a number within ``bounds`` written as an interval: ``"[1, inf)"``,
    ``"(0, 1]"``. Numbers must be finite whatever the bounds (NaN and inf refused).
    ``path``: a file or folder (or a file-backed URI) whose name a file system must be
    able to hold."""
    meta = {"help": help, "choices": choices, "bounds": _interval(bounds) if bounds else None,
            "path": path}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _interval(text: str) -> tuple[float, float, bool, bool]:
    """``"[1, inf)"`` -> (1, inf, closed below, closed above)."""
    lo, hi = (float(x) for x in text.strip()[1:-1].split(","))
    return lo, hi, text.strip()[0] == "[", text.strip()[-1] == "]"


def _allowed(bounds: tuple[float, float, bool, bool]) -> str:
    lo, hi, lo_in, hi_in = bounds
    num = lambda v: f"{v:g}"  # noqa: E731
    if hi == math.inf:
        return f"be {'>=' if lo_in else '>'} {num(lo)}"
    return f"lie in {'[' if lo_in else '('}{num(lo)}, {num(hi)}{']' if hi_in else ')'}"


def check_knobs(obj: Any, prefix: str) -> None:
    """Every field of dataclass ``obj`` within what its knob allows, else a ConfigError
    naming the dotted key, the value and what is allowed."""
    for f in fields(obj):
        v = getattr(obj, f.name)
        if v is None:
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        if isinstance(v, str) and not v.strip():  # never "the default" in disguise
            raise ConfigError(f"{key} is empty: give it a value, or leave it unset (its "
                              "default)")
        choices, bounds = f.metadata.get("choices"), f.metadata.get("bounds")
        if f.metadata.get("path") and isinstance(v, str):
            check_path(key, v)
        if choices is not None and v not in choices:
            raise ConfigError(f"{key}={v!r}; allowed: {list(choices)}")
        if bounds is not None and isinstance(v, int | float) and not isinstance(v, bool):
            lo, hi, lo_in, hi_in = bounds
            if not ((lo <= v if lo_in else lo < v) and (v <= hi if hi_in else v < hi)):
                raise ConfigError(f"{key} must {_allowed(bounds)}, got {v}")


#: the longest name of one file or folder, and of a whole path, that Linux and macOS take
NAME_MAX, PATH_MAX = 255, 4096


def check_path(key: str, value: str) -> None:
    """A path (or a ``file:``/``sqlite:`` URI's path) no file system can hold is refused
    here, by name, before anything tries to create it: a part longer than ``NAME_MAX``
    bytes, or the whole longer than ``PATH_MAX``. A server's URI is not a path."""
    scheme, sep, rest = value.partition("://")
    if sep and scheme not in ("file", "sqlite"):
        return
    path = rest if sep else value
    longest = max(path.split("/"), key=lambda part: len(part.encode()))
    if len(longest.encode()) > NAME_MAX:
        raise ConfigError(f"{key}: its part {longest[:24]!r}... is {len(longest.encode())} bytes "
                          f"long; a file system takes at most {NAME_MAX}: choose a shorter name")
    if len(path.encode()) > PATH_MAX:
        raise ConfigError(f"{key}: a path of {len(path.encode())} bytes; a file system takes at "
                          f"most {PATH_MAX}: choose a shorter one")


class Checked:
    """A config section that checks its knobs when made, from a mapping or in code
    (``TrainConfig(lr=-1)`` is refused too); ``key`` names it in messages."""

    key: typing.ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_knobs(self, self.key)


def describe(f: dataclasses.Field) -> str:
    """A knob's help text with what it allows (for --help, docs and `rayfed-bpt config`)."""
    text = f.metadata.get("help", "")
    if f.metadata.get("choices"):
        text += f" (one of: {', '.join(map(str, f.metadata['choices']))})"
    elif f.metadata.get("bounds"):
        text += f" (must {_allowed(f.metadata['bounds'])})"
    return text


def schema_keys(cls: type, prefix: str = "") -> list[tuple[str, Any, str, str]]:
    """Every setting of dataclass ``cls`` as (dotted key, default, type, help), nested
    sections flattened: the one source of `rayfed-bpt config`, docs/config.md and the
    derived CLI options."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            out += schema_keys(hints[f.name], key + ".")
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        tp = getattr(hints[f.name], "__name__", None) or str(hints[f.name])
        out.append((key, default, str(tp).replace("NoneType", "None"), describe(f)))
    return out


def markdown_table(rows: list[tuple[str, Any, str, str]]) -> str:
    """``schema_keys`` rows as a Markdown table."""
    lines = ["| key | default | type | what it is |", "|---|---|---|---|"]
    for key, default, tp, help_ in rows:
        shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("\n...")
        cells = [f"`{key}`", f"`{shown}`", tp, help_]
        lines.append("| " + " | ".join(c.replace("|", "\\|") if i > 1 else c
                                       for i, c in enumerate(cells)) + " |")
    return "\n".join(lines) + "\n"


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}={value!r} must be one of {[a.__name__ for a in args]}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} must be an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}={value!r} must be a number")
        if not math.isfinite(value):  # NaN or inf would fail (or run silently) in an actor
            raise ConfigError(f"{key}={value!r} must be a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping")
        return dict(value)
    if tp is list or origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list")
        return list(value)
    return value


def from_dict(cls: type, d: dict | None, prefix: str = "",
              renamed: dict[str, str] | None = None) -> Any:
    """Build dataclass ``cls`` from ``d``: unknown keys (``renamed`` ones with their new
    name), wrong types and values outside a knob's choices or bounds are refused."""
    d = d or {}
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        for u in unknown:
            if where + u in (renamed or {}):
                new = renamed[where + u]
                raise ConfigError(f"{where + u} was renamed {new}: write {new}={d[u]!r} instead")
        raise ConfigError(
            f"unknown config key(s) {[where + u for u in unknown]}; allowed under "
            f"{prefix or 'the top level'}: {names}"
        )
    kwargs = {}
    for name in names:
        if name not in d:
            continue
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, d[name], key, renamed)
        else:
            kwargs[name] = _coerce(d[name], tp, key)
    try:
        obj = cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{prefix or 'config'}: {e}") from e
    if not isinstance(obj, Checked):  # a section checked itself as it was made
        check_knobs(obj, prefix)
    return obj


def set_key(d: dict, key: str, value: Any, what: str | None = None) -> None:
    """``d[a][b] = value`` for ``key`` "a.b" (sections made as needed; a mapping value
    is merged key by key, so ``{"train": {"lr": 0.1}}`` keeps the other train keys)."""
    *parents, last = key.strip().split(".")
    node = d
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{what or key}: {p} is not a config section")
    if isinstance(value, Mapping) and isinstance(node.get(last), dict):
        for k, v in value.items():
            set_key(node[last], str(k), v, what)
    else:
        node[last] = dict(value) if isinstance(value, Mapping) else value


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """``a.b=c`` sets d["a"]["b"] = yaml-parsed "c"."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. train.rounds=5)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: cannot parse value ({e})") from e
        set_key(d, key, value, f"override {item!r}")
    return d


def read_yaml(path: str | Path, what: str = "config file") -> dict:
    """A YAML mapping from ``path``, or a ConfigError naming the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {e}") from e
    if not isinstance(d, dict):
        raise ConfigError(f"{what} {path}: expected a mapping at the top level")
    return d
