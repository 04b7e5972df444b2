"""Experiment suites: the paper's tables and plots from one command.

``suite`` says which runs (plain data), ``runner`` runs them on Ray with a
result cache and MLflow, ``report`` writes ``results.md`` and the PNGs.
"""

from .runner import run_suite
from .suite import SUITES, paper_suite

__all__ = ["SUITES", "paper_suite", "run_suite"]
