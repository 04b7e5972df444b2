"""Hyper-parameter sweeps with Ray Tune, by role: ``space`` (the space file, no Ray),
``sweep`` (searchers, schedulers, trials), ``results`` (the choice, plots, anytime curve)."""

from .space import SweepSpace, load_space


def run_sweep(*args, **kwargs) -> dict:
    """Run (or resume) a sweep (imports Ray Tune only when called)."""
    from .sweep import run_sweep as run

    return run(*args, **kwargs)


__all__ = ["SweepSpace", "load_space", "run_sweep"]
