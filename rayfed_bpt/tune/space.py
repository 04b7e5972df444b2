"""Search-space files: parsed and checked without Ray (the entry process refuses a bad
space before anything starts), and each sampled point turned into a trial's config.

A space file (``tune_spaces/*.yaml``) names the metric and mode, the searcher, the
scheduler, ``num_samples``, a sweep ``seed``, per-trial resources, fixed ``base``
overrides and the ``space``: dotted config keys -> one distribution each, optionally
with ``when: {key: value}`` (the key is sampled only when another sampled key has
that value, e.g. ``noise_scale`` only with ``noise: gaussian``). One format for
every searcher. ``budget`` (trial-rounds) stops a sweep once it has spent them: how
searchers are compared at equal cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig, apply_overrides, from_dict, read_yaml, with_plugins
from ..errors import ConfigError

DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint", "grid")
SEARCHERS = ("random", "grid", "optuna", "bohb")  # optuna: TPE; bohb: TuneBOHB
SCHEDULERS = ("asha", "fifo", "bohb")  # bohb: HyperBandForBOHB, BOHB's own
SPACE_KEYS = ("name", "metric", "mode", "num_samples", "search", "scheduler", "resources",
              "max_concurrent", "seed", "budget", "base", "space")
RESOURCE_KEYS = ("num_actors", "cpus_per_actor", "gpus_per_actor")
DEFAULT_VAL_FRACTION = 0.2  # a sweep's validation share when its base sets none


@dataclass
class Dimension:
    """One swept key: its distribution and the condition under which it is sampled."""

    key: str
    kind: str
    args: list
    when: dict = field(default_factory=dict)

    @property
    def bounds(self) -> tuple[Any, Any]:
        """The first and last value a point may take (a space's corners)."""
        if self.kind in ("choice", "grid"):
            return self.args[0], self.args[-1]
        if self.kind == "randint":
            return int(self.args[0]), int(self.args[1]) - 1
        return float(self.args[0]), float(self.args[1])


@dataclass
class SweepSpace:
    """A parsed, validated search-space file."""

    path: Path
    name: str
    metric: str = "val_acc_mean"
    mode: str = "max"
    num_samples: int = 4
    search: str = "random"
    seed: int = 0
    scheduler: dict = field(default_factory=lambda: {"name": "asha"})
    resources: dict = field(default_factory=dict)
    max_concurrent: int | None = None
    budget: int | None = None  # trial-rounds; the sweep stops once they are spent
    base: dict = field(default_factory=dict)
    dims: list[Dimension] = field(default_factory=list)
    base_config: ExperimentConfig | None = None

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dims]

    def trial_config(self, point: dict) -> ExperimentConfig:
        """One trial's config: the base, then the sampled point (keys whose condition
        does not hold keep the base's value). Config objects throughout: no text."""
        # (searchers may hand numpy scalars: BOHB's ConfigSpace does)
        values = {k: v.item() if hasattr(v, "item") else v for k, v in point.items()
                  if v is not None}
        return self.base_config.with_values(values)


def _err(path: Path, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {msg}")


def _dimension(path: Path, key: str, spec: Any) -> Dimension:
    if key.startswith("data."):
        raise _err(path, f"space.{key}", "data options cannot be swept: every trial must "
                   "see the same partition (put them in base)")
    spec = dict(spec) if isinstance(spec, dict) else spec
    when = spec.pop("when", {}) if isinstance(spec, dict) else {}
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise _err(path, f"space.{key}", f"{spec!r} is not one distribution; write e.g. "
                   f"{{loguniform: [1e-5, 1e-1]}}; allowed: {list(DISTRIBUTIONS)} (and when:)")
    kind, args = next(iter(spec.items()))
    if kind in ("uniform", "loguniform", "randint") and (
            not isinstance(args, list) or len(args) != 2):
        raise _err(path, f"space.{key}.{kind}", f"needs [low, high], got {args!r}")
    if kind in ("choice", "grid") and (not isinstance(args, list) or not args):
        raise _err(path, f"space.{key}.{kind}", f"needs a non-empty list, got {args!r}")
    if kind in ("uniform", "loguniform"):
        try:
            args = [float(a) for a in args]  # YAML 1.1 reads "1e-3" as a string
        except (TypeError, ValueError):
            raise _err(path, f"space.{key}.{kind}", f"needs numbers, got {args!r}") from None
    if not isinstance(when, dict) or len(when) > 1:
        raise _err(path, f"space.{key}.when", f"{when!r}: write one {{key: value}}")
    return Dimension(key, kind, list(args), dict(when))


def load_space(path: str | Path, overrides: list[str] = (),
               plugins: list[str] = ()) -> SweepSpace:
    """Read and check a space file; ``overrides`` (dotted) change its ``base`` and
    ``plugins`` (``--import``) join its ``base.plugins``."""
    path = Path(path)
    raw = read_yaml(path, "search-space file (see tune_spaces/)")
    unknown = sorted(set(raw) - set(SPACE_KEYS))
    if unknown:
        raise _err(path, str(unknown), f"unknown key(s); allowed: {list(SPACE_KEYS)}")
    sp = SweepSpace(path=path, name=raw.get("name", path.stem),
                    **{k: raw[k] for k in ("metric", "mode", "num_samples", "search", "seed",
                                           "scheduler", "resources", "max_concurrent",
                                           "budget")
                       if k in raw})
    if sp.mode not in ("max", "min"):
        raise _err(path, "mode", f"{sp.mode!r}; allowed: ['max', 'min']")
    if sp.search not in SEARCHERS:
        raise _err(path, "search", f"{sp.search!r}; allowed: {list(SEARCHERS)}")
    sched = sp.scheduler.get("name", "asha")
    if sched not in SCHEDULERS:
        raise _err(path, "scheduler.name", f"{sched!r}; allowed: {list(SCHEDULERS)}")
    if (sp.search == "bohb") != (sched == "bohb"):
        raise _err(path, "search/scheduler.name", "BOHB is a searcher and its scheduler "
                   "together: write search: bohb with scheduler: {name: bohb}")
    extra = set(sp.scheduler) - {"name", "grace_period", "reduction_factor"}
    if extra:
        raise _err(path, f"scheduler.{sorted(extra)[0]}",
                   "unknown; allowed: ['name', 'grace_period', 'reduction_factor']")
    bad_res = set(sp.resources) - set(RESOURCE_KEYS)
    if bad_res:
        raise _err(path, f"resources.{sorted(bad_res)[0]}", f"unknown; allowed: "
                   f"{list(RESOURCE_KEYS)}")
    for key in ("num_samples", "budget", "max_concurrent", "seed"):
        v = getattr(sp, key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)
                              or v < (0 if key == "seed" else 1)):
            raise _err(path, key, f"{v!r} must be an integer >= {0 if key == 'seed' else 1}")
    if sp.metric.startswith(("acc_", "global_acc", "domain_acc", "nll_mean", "ece_mean")):
        raise _err(path, "metric", f"{sp.metric!r} is a test-split metric: a sweep chooses "
                   f"on validation (val_{sp.metric}); the chosen config's test metrics are "
                   "reported once, at the end")
    sp.dims = [_dimension(path, k, v) for k, v in (raw.get("space") or {}).items()]
    for d in sp.dims:
        if d.kind == "grid" and sp.search != "grid":
            raise _err(path, f"space.{d.key}.grid", f"grid values need search: grid (not "
                       f"{sp.search}); use choice")
        for cond_key in d.when:
            if cond_key not in sp.keys or sp.keys.index(cond_key) > sp.keys.index(d.key):
                raise _err(path, f"space.{d.key}.when", f"{cond_key} must be a swept key "
                           "listed above it")
    base: dict = {}
    _merge(base, raw.get("base") or {})
    apply_overrides(base, list(overrides))  # dotted overrides on top of base
    with_plugins(base, list(plugins))
    sp.base = base
    try:
        cfg = from_dict(ExperimentConfig, base)
        fixed = {"train.eval_every": 1}  # the scheduler needs the metric every round
        fixed.update({f"runtime.{k}": v for k, v in sp.resources.items()})
        if sp.metric.startswith("val_"):
            fixed["train.eval_test"] = False  # trials never see the test split
            if cfg.data.val_fraction == 0:
                fixed["data.val_fraction"] = DEFAULT_VAL_FRACTION
        sp.base_config = cfg.with_values(fixed)
    except ConfigError as e:
        raise ConfigError(f"{path}: base: {e}") from e
    # Every sampled point must make a valid config (its algorithm options included:
    # ExperimentConfig checks them): check the corners now.
    for point in corner_points(sp):
        try:
            sp.trial_config(point)
        except ConfigError as e:
            raise ConfigError(f"{path}: a point of the space is not a valid config: {e}") from e
    return sp


def corner_points(sp: SweepSpace) -> list[dict]:
    """The space's two corners (every key at its first, then its last value)."""
    return [{d.key: d.bounds[i] for d in sp.dims} for i in (0, 1)]


def _merge(dst: dict, src: dict) -> None:
    """Nested ``src`` (dotted keys allowed, as in --set) into ``dst``."""
    for k, v in src.items():
        node, parts = dst, k.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if isinstance(v, dict):
            _merge(node.setdefault(parts[-1], {}), v)
        else:
            node[parts[-1]] = v
