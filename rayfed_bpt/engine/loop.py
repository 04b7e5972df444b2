"""The round engine: the one federated loop, for every runtime.

Per round: sample clients (seeded by the round), let the pool train them,
aggregate through the algorithm, evaluate every client when the round asks
for it, then hand the round's metrics to the listeners in order (checkpoint
first, then tracking, progress, pacing). Plain Python, no Ray: the in-process
pool and the Ray actor pool run exactly this loop, so their equality holds by
construction.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ..algorithms.base import Algorithm, State
from ..algorithms.evaluation import ClientEval, split_prefix, summarize, train_metrics
from ..config import ExperimentConfig
from .pool import ClientPool
from .setup import sample_clients
from .state import RoundListener, RunState


def state_bytes(state: State) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


class Engine:
    def __init__(self, cfg: ExperimentConfig, alg: Algorithm, pool: ClientPool,
                 client_ids: Sequence[int], domain_names: Sequence[str],
                 listeners: Sequence[RoundListener] = ()):
        self.cfg = cfg
        self.alg = alg
        self.pool = pool
        self.client_ids = list(client_ids)
        self.domain_names = list(domain_names)
        self.listeners = list(listeners)
        self.last_evals: list[ClientEval] = []

    def initial_state(self) -> RunState:
        return RunState(0, self.alg.init_global(),
                        {k: self.alg.init_personal(k) for k in self.client_ids})

    def evaluates(self, round: int) -> bool:
        """Whether round ``round`` (0-based) ends with an evaluation."""
        t = self.cfg.train
        return (round + 1) % t.eval_every == 0 or round + 1 == t.rounds

    def eval_splits(self) -> tuple[str, ...]:
        """What an evaluation covers: the validation split when the run holds one out, the
        test split unless ``train.eval_test`` is off (sweeps choose on validation only)."""
        return ((("val",) if self.cfg.data.val_fraction > 0 else ())
                + (("test",) if self.cfg.train.eval_test else ()))

    def evaluate(self, state: RunState, options: dict | None = None,
                 splits: Sequence[str] | None = None) -> dict[str, float]:
        """Every client on its own ``splits`` (default ``eval_splits``) in one pass, with
        its own personal state: test metrics unprefixed, validation ones ``val_``."""
        round = max(state.round - 1, 0)
        splits = tuple(splits or self.eval_splits())
        evals = sorted(self.pool.evaluate(state.global_state, state.personal, round, options,
                                          splits), key=lambda e: e.client_id)
        out: dict[str, float] = {}
        for split in splits:
            part = [e for e in evals if e.split == split]
            if options is None and split == "test":
                self.last_evals = part
            # options are test-time ones (S, the mean prompt): what is personal stays so
            summary = summarize(part, self.domain_names, self.alg.has_global_model)
            out.update({split_prefix(split) + k: v for k, v in summary.items()})
        return out

    def step(self, state: RunState) -> dict:
        """Run round ``state.round``; update ``state``; return the round's metrics."""
        r = state.round
        t0 = time.perf_counter()
        sampled = sample_clients(len(self.client_ids), self.cfg.train, self.cfg.seed, r)
        results = sorted(
            self.pool.train(state.global_state, {k: state.personal[k] for k in sampled}, r),
            key=lambda x: x.client_id)
        down = state_bytes(state.global_state) * len(sampled)
        for res in results:
            state.personal[res.client_id] = res.personal
        state.global_state = self.alg.aggregate(state.global_state, results, r)
        state.round = r + 1
        m: dict = {"round": r + 1, **train_metrics(results)}
        if self.evaluates(r):
            t_eval = time.perf_counter()
            m.update(self.evaluate(state))
            m["eval_seconds"] = time.perf_counter() - t_eval
        m["round_seconds"] = time.perf_counter() - t0
        m["comm_bytes_down"] = float(down)
        m["comm_bytes_up"] = float(sum(state_bytes(x.update) for x in results))
        state.history.append(m)
        return m

    def run(self, state: RunState) -> RunState:
        """Rounds ``state.round`` .. ``train.rounds``: a new run, or one resumed."""
        while state.round < self.cfg.train.rounds:
            m = self.step(state)
            for listener in self.listeners:
                listener.on_round(state, m)
        for listener in self.listeners:
            listener.on_finish(state, self)
        return state


def evaluated(history: list[dict]) -> list[dict]:
    """The rounds that ended with an evaluation (of the test or the validation split)."""
    return [m for m in history if "acc_mean" in m or "val_acc_mean" in m]
