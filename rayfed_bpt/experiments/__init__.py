"""Experiment suites: the paper's tables and plots from one command.

``suite`` says which runs (plain data), ``store`` keeps finished runs on disk
and in MLflow, ``report`` writes ``results.md`` and the PNGs: none of these imports
Ray. ``runner`` runs a suite on Ray (imported where a suite is run).
"""

from .paper import SUITES, paper_suite

__all__ = ["SUITES", "paper_suite"]
