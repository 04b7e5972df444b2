"""A run's state between rounds, and what listens to the rounds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class RunState:
    """Everything a round consumes and the next one needs; what a checkpoint holds.

    All randomness is drawn from generators seeded by (seed, round, client), so
    this state plus the config fixes every later round bit for bit.
    """

    round: int  # rounds completed
    global_state: dict
    personal: Mapping[int, dict]  # a PersonalStore (engine.personal_store) once adopted
    history: list[dict] = field(default_factory=list)  # every round's metrics
    mlflow_run_id: str | None = None


class RoundListener:
    """Told about every finished round (and the end of the run); no-ops by default."""

    #: the metric its ``on_round`` time is added to (e.g. ``checkpoint_seconds``), if any
    timing: str | None = None

    def on_round(self, state: RunState, metrics: dict) -> None:
        pass

    def on_finish(self, state: RunState, engine) -> None:
        """The last round is done; ``engine`` holds its last evaluation and its pool."""
