"""Experiment suites: the paper's tables and plots from one command.

``suite`` says which runs (plain data), ``store`` keeps finished runs on disk
and in MLflow, ``report`` writes ``results.md`` and the PNGs. None of it
imports Ray: ``rayfed_bpt.runtime.suite_runner`` runs a suite on Ray.
"""

from .suite import SUITES, paper_suite

__all__ = ["SUITES", "paper_suite"]
