"""Every setting, every kind of bad value, generated (hypothesis): refused where a config
is made — one ``ConfigError`` that names the key, well under 2 s, before anything starts —
for every knob of the schema and every built-in algorithm's options; a sample of each
kind through the real CLI exits 2 with one line, no traceback, and writes nothing."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import time
import types
import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rayfed_bpt.algorithms import list_algorithms
from rayfed_bpt.catalog import options_of, preset_of
from rayfed_bpt.config import ExperimentConfig, load_config
from rayfed_bpt.errors import ConfigError
from rayfed_bpt.knobs import NAME_MAX
from rayfed_bpt.plugins import origin

#: generated bad values per setting (docs/errors.md states the total)
EXAMPLES = 25


def knobs_of(cls: type, prefix: str = ""):
    """(dotted key, type, metadata) of every setting of a schema, sections flattened."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from knobs_of(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", tp, f.metadata


def kinds(tp) -> set:
    """The types a setting takes, None aside (``list[str]`` is a list)."""
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    args = [a for a in typing.get_args(tp) if a is not type(None)] if union else [tp]
    return {typing.get_origin(a) or a for a in args}


WORD = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
               max_size=30).filter(lambda t: t.strip() and not _number(t))
NOT_FINITE = st.sampled_from([".nan", ".inf", "-.inf"]).map(yaml.safe_load)


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text.strip().lower() in ("true", "false", "yes", "no", "on", "off", "null", "~")
    return True


def bad_values(tp, meta) -> st.SearchStrategy:
    """Values this setting must refuse: of a type it does not take, not finite, out of its
    bounds, outside its choices, empty, or (a path) longer than a file system holds."""
    k = kinds(tp)
    out = []
    if k & {int, float}:
        lo, hi, lo_in, hi_in = meta.get("bounds") or (-math.inf, math.inf, False, False)
        out.append(NOT_FINITE)
        if lo > -math.inf:
            below = st.integers(-10**6, math.ceil(lo) - (1 if lo_in else 0))
            out.append(below if int in k and float not in k else below.map(float))
        if hi < math.inf:
            out.append(st.floats(hi + 1e-6 if hi_in else hi, 1e9, allow_nan=False))
    if int in k and float not in k:
        out.append(st.floats(-1e6, 1e6).filter(lambda x: x != int(x)))
    if bool not in k:
        out.append(st.booleans())
    if not k & {str}:
        out.append(WORD)
    elif meta.get("choices"):
        out.append(WORD.filter(lambda w: w not in meta["choices"]))
    else:
        out.append(st.sampled_from(["", " ", "\t"]))
        if meta.get("path"):
            out.append(st.integers(NAME_MAX + 1, 3 * NAME_MAX).map(lambda n: "x" * n))
    if not k & {list}:
        out.append(st.lists(st.integers(), min_size=1, max_size=3))
    if not k & {dict}:
        out.append(st.dictionaries(st.sampled_from("ab"), st.integers(), min_size=1))
    return st.one_of(out)


def as_override(key: str, value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, allow_unicode=True)
    return f"{key}={text.removesuffix(chr(10)).removesuffix('...').strip()}"


SCHEMA = list(knobs_of(ExperimentConfig))
OPTIONS = [(name, f"algorithm.options.{key}", tp, meta)
           for name in sorted(n for n in list_algorithms() if origin("algorithms", n) ==
                              "built-in" and not preset_of(n))
           for key, tp, meta in knobs_of(options_of(name))]
#: the same generated values every run, and no example database left in the checkout
GENERATED = settings(max_examples=EXAMPLES, deadline=2000, derandomize=True, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _refused(overrides: list[str], key: str) -> None:
    t = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert key in str(e.value), (overrides, str(e.value))
    assert time.perf_counter() - t < 2.0


@pytest.mark.parametrize("key, tp, meta", [k for k in SCHEMA if k[0] != "algorithm.name"],
                         ids=[k[0] for k in SCHEMA if k[0] != "algorithm.name"])
@GENERATED
@given(data=st.data())
def test_every_setting_refuses_every_kind_of_bad_value(key, tp, meta, data):
    value = data.draw(bad_values(tp, meta), label=key)
    _refused([as_override(key, value)], key)


@pytest.mark.parametrize("name, key, tp, meta", OPTIONS, ids=[f"{n}:{k}" for n, k, *_ in OPTIONS])
@GENERATED
@given(data=st.data())
def test_every_algorithm_option_refuses_every_kind_of_bad_value(name, key, tp, meta, data):
    value = data.draw(bad_values(tp, meta), label=key)
    _refused([f"algorithm.name={name}", as_override(key, value)], key)


CLI_SAMPLE = [  # one of each kind, through the real command
    ("train.rounds=2.5", "train.rounds"), ("train.lr=.nan", "train.lr"),
    ("data.val_fraction=0.95", "data.val_fraction"), ("seed=-1", "seed"),
    ("train.precision=fp8", "train.precision"), ("runtime.output_dir=''", "runtime.output_dir"),
    (f"data.dataset={'d' * 300}.arrow", "data.dataset"), ("train.eval_test=maybe", "eval_test"),
    ("runtime.faults=boom", "runtime.faults"), ("algorithm.options=[1]", "algorithm.options"),
    ("runtime.address=not-an-address", "runtime.address"),
    ("tracking.tracking_uri=sqlite:///" + "t" * 300 + ".db", "tracking.tracking_uri"),
]


@pytest.mark.parametrize("override, key", CLI_SAMPLE, ids=[k for _, k in CLI_SAMPLE])
def test_a_bad_value_through_the_cli_is_one_line_and_writes_nothing(override, key, tmp_path):
    env = {**os.environ, "RAYFED_BPT_DATA": str(tmp_path / "data")}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "rayfed_bpt.cli", "run", "--set", override],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("rayfed-bpt: error: ") and key in lines[0]
    assert list(tmp_path.iterdir()) == []  # no run folder, no data, no MLflow store
    assert time.perf_counter() - t < 10  # the process's imports included; Ray never starts
