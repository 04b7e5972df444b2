"""What many tests build a run from, in one place: a small config on a test partition,
and a history stripped to what must be bit-identical."""

from __future__ import annotations

from rayfed_bpt.config import ExperimentConfig, load_config
from rayfed_bpt.engine.loop import is_timing

#: a few rounds of a few examples a client: enough for every code path, seconds a run
SMALL = ("data.max_train_per_client=64", "data.max_test_per_client=40", "train.rounds=3",
         "train.eval_every=1", "train.fraction=1.0", "algorithm.options.prompt_len=2")


def small(part, *extra: str) -> ExperimentConfig:
    """``SMALL`` on partition ``part``, then ``extra`` dotted overrides (the later win)."""
    return load_config(None, [f"data.partition_dir={part}", *SMALL, *extra])


def small_overrides(part, out, *extra: str) -> list[str]:
    """``small``'s overrides for a ``rayfed-bpt run --set`` into output folder ``out``."""
    return [f"data.partition_dir={part}", *SMALL, f"runtime.output_dir={out}", *extra]


def strip(history: list[dict]) -> list[dict]:
    """Every metric but the timings; NaN (no global model) made comparable with ``==``."""
    return [{k: "nan" if v != v else v for k, v in m.items() if not is_timing(k)}
            for m in history]
