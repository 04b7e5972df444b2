"""The round engine: the one federated loop, for every runtime.

Per round: sample clients (seeded by the round), let the pool train them,
aggregate through the algorithm, evaluate the clients when the round asks for
it (every client, or a seeded sample: ``train.eval_fraction``), then hand the
round's metrics to the listeners in order (checkpoint first, then tracking,
progress, pacing). Each part's seconds are in the metrics (``*_seconds``).
Personal states live in a ``PersonalStore``: the driver holds those of a
round's clients, not the population's. Plain Python, no Ray: the in-process
pool and the Ray actor pool run exactly this loop, so their equality holds by
construction.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..algorithms.base import Algorithm, State, seed_for
from ..algorithms.evaluation import (
    ClientEval,
    mean_ci95,
    split_prefix,
    summarize,
    train_metrics,
)
from ..config import ExperimentConfig
from .personal_store import PersonalStore, as_store, resolve_hot
from .pool import ClientPool
from .setup import round_half_up, sample_clients
from .state import RoundListener, RunState


def state_bytes(state: State) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def is_timing(key: str) -> bool:
    """A metric that measures seconds: it differs between two runs of one config."""
    return key.endswith("_seconds")


class Engine:
    def __init__(self, cfg: ExperimentConfig, alg: Algorithm, pool: ClientPool,
                 client_ids: Sequence[int], domain_names: Sequence[str],
                 listeners: Sequence[RoundListener] = (), personal_dir: str | Path | None = None,
                 new_clients: Sequence[int] = (), ood_clients: dict[str, int] | None = None):
        self.cfg = cfg
        self.alg = alg
        self.pool = pool
        self.client_ids = list(client_ids)  # the clients that train
        # held out of training (data.new_clients, data.ood_domains): metric prefix -> clients
        self.held_out = {p: ids for p, ids in (("new_", sorted(new_clients)),
                                               ("ood_", sorted((ood_clients or {}).values())))
                         if ids}
        self.domain_names = list(domain_names)
        self.listeners = list(listeners)
        self.personal_dir = personal_dir  # where spilled personal states go (the run's)
        self.hot, self.hot_bytes = resolve_hot(cfg.runtime.personal_memory,
                                               cfg.runtime.personal_memory_mb)
        self.last_evals: list[ClientEval] = []

    def initial_state(self) -> RunState:
        return RunState(0, self.alg.init_global(),
                        PersonalStore(self.client_ids, self.alg.init_personal, self.hot,
                                      self.personal_dir, hot_bytes=self.hot_bytes))

    def adopt(self, state: RunState) -> RunState:
        """``state`` (new, or read from a checkpoint) with its store bound to this run."""
        state.personal = as_store(state.personal)
        state.personal.bind(self.client_ids, self.alg.init_personal, self.hot, self.hot_bytes)
        return state

    def eval_clients(self, round: int, ids: Sequence[int] | None = None,
                     stream: str = "eval") -> list[int]:
        """The clients (of ``ids``, default: those that train) evaluated after round
        ``round`` (0-based): all, or a seeded share ``train.eval_fraction`` — the same
        share every time, or a fresh one each evaluation (``train.eval_resample``); the
        last round all unless ``train.eval_final_all`` is off."""
        ids = self.client_ids if ids is None else list(ids)
        t, n = self.cfg.train, len(ids)
        if t.eval_fraction >= 1 or (round + 1 == t.rounds and t.eval_final_all):
            return ids
        m = min(n, max(1, round_half_up(t.eval_fraction * n)))
        rng = np.random.default_rng(seed_for(self.cfg.seed, stream,
                                             round if t.eval_resample else 0))
        return sorted(np.asarray(ids)[rng.choice(n, m, replace=False)].tolist())

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
                 splits: Sequence[str] | None = None,
                 clients: Sequence[int] | None = None) -> dict[str, float]:
        """``clients`` (default: all) on their own ``splits`` (default ``eval_splits``) in
        one pass, each with its own personal state: test metrics unprefixed, validation
        ones ``val_``. A sample of the clients also reports its size (``eval_clients``)
        and the 95 % interval's half-width of the client mean (``acc_mean_ci95``)."""
        self.adopt(state)
        round = max(state.round - 1, 0)
        splits = tuple(splits or self.eval_splits())
        ids = self.client_ids if clients is None else list(clients)
        evals = sorted(self.pool.evaluate(state.global_state, state.personal.subset(ids),
                                          round, options, splits), key=lambda e: e.client_id)
        out: dict[str, float] = {}
        for split in splits:
            part = [e for e in evals if e.split == split]
            if options is None and split == "test":
                self.last_evals = part
            # options are test-time ones (S, the mean prompt): what is personal stays so
            summary = summarize(part, self.domain_names, self.alg.has_global_model)
            if len(ids) < len(self.client_ids):
                summary["eval_clients"] = float(len(ids))
                summary["acc_mean_ci95"] = mean_ci95(
                    [e.accuracy for e in part if e.total], len(self.client_ids))
            out.update({split_prefix(split) + k: v for k, v in summary.items()})
        # the cost beside the score: what a client holds and trains, and what one
        # prediction costs (frozen-backbone passes per image, feature pass included)
        out["model_params"] = float(self.alg.model_params())
        out["backbone_passes_per_image"] = float(self.alg.backbone_passes(options))
        return out

    def evaluates_held_out(self, round: int) -> bool:
        """Whether round ``round`` (0-based) also evaluates the held-out clients: the last
        one, or each evaluation with ``train.eval_new=each`` (test split, as the rest)."""
        t = self.cfg.train
        return (bool(self.held_out) and t.eval_test and self.evaluates(round)
                and (round + 1 == t.rounds or t.eval_new == "each"))

    def evaluate_held_out(self, state: RunState, round: int | None = None) -> dict[str, float]:
        """The clients that never trained, on their test split: zero-shot (the global state,
        a personal part at its initial value) and, with ``train.adapt_rounds``, after that
        many of the method's own local updates on their train split (``*_adapted_*``).
        New clients are sampled as the others are (``eval_clients``); each unseen domain
        is one client. Metrics ``new_*`` and ``ood_*``; nothing in the run's state changes."""
        round = state.round - 1 if round is None else round
        out: dict[str, float] = {}
        for prefix, ids in self.held_out.items():
            if prefix == "new_":
                ids = self.eval_clients(round, ids, "eval_new")
            start = {k: self.alg.init_personal(k) for k in ids}
            out.update(self._held_out_summary(state.global_state, start, round, prefix, ""))
            if self.cfg.train.adapt_rounds:
                adapted = self.adapt(state.global_state, start, state.round)
                out.update(self._held_out_summary(state.global_state, adapted, round, prefix,
                                                  "_adapted"))
            if len(ids) < len(self.held_out[prefix]):
                out[f"{prefix}eval_clients"] = float(len(ids))
        return out

    def adapt(self, global_state: State, personal: dict[int, State], round: int
              ) -> dict[int, State]:
        """Each client's ``train.adapt_rounds`` local updates from ``global_state``, as a
        round's (rounds ``round``, ``round + 1``, ...: seeds no trained client used). What a
        client ends with is its whole state, shared part included, carried as personal:
        a personal entry loads over the global one of its name."""
        shared = set(global_state)
        for j in range(self.cfg.train.adapt_rounds):
            results = self.pool.train(global_state, personal, round + j)
            personal = {r.client_id: {**{k: v for k, v in r.update.items() if k in shared},
                                      **r.personal} for r in results}
        return personal

    def _held_out_summary(self, global_state: State, personal: dict[int, State], round: int,
                          prefix: str, tag: str) -> dict[str, float]:
        evals = sorted(self.pool.evaluate(global_state, personal, round, None, ("test",)),
                       key=lambda e: e.client_id)  # any pool's order: the same sums
        summary = summarize(evals, self.domain_names, False)
        del summary["global_acc"]  # no pooled global model among held-out clients
        population = len(self.held_out[prefix])
        if len(evals) < population:  # a sample of the new clients: its interval, as above
            summary["acc_mean_ci95"] = mean_ci95([e.accuracy for e in evals if e.total],
                                                 population)
        out = {}
        for k, v in summary.items():
            if k.startswith("domain_acc/") and v != v:
                continue  # a domain these clients do not hold
            name = k.replace("/", tag + "/", 1) if "/" in k else k.replace("_", tag + "_", 1)
            out[prefix + name] = v
        return out

    def step(self, state: RunState) -> dict:
        """Run round ``state.round``; update ``state``; return the round's metrics."""
        r = state.round
        t0 = time.perf_counter()
        sampled = sample_clients(len(self.client_ids), self.cfg.train, self.cfg.seed, r)
        ids = [self.client_ids[i] for i in sampled]
        # the round's states are read when their work unit goes out (a subset, not a dict)
        results = sorted(self.pool.train(state.global_state, state.personal.subset(ids), r),
                         key=lambda x: x.client_id)
        t_train = time.perf_counter()
        down = state_bytes(state.global_state) * len(sampled)
        up = float(sum(state_bytes(x.update) for x in results))
        for res in results:
            state.personal.put(res.client_id, res.personal)
        state.global_state = self.alg.aggregate(state.global_state, results, r)
        state.round = r + 1
        m: dict = {"round": r + 1, **train_metrics(results)}
        del results  # the round's updates and states: aggregated and in the store (which
        # spills what its budget does not hold) before any evaluation loads more states
        t_agg = time.perf_counter()
        if self.evaluates(r):
            m.update(self.evaluate(state, clients=self.eval_clients(r)))
            if self.evaluates_held_out(r):
                m.update(self.evaluate_held_out(state, r))
            m["eval_seconds"] = time.perf_counter() - t_agg
        m["train_seconds"] = t_train - t0
        m["aggregate_seconds"] = t_agg - t_train
        m["round_seconds"] = time.perf_counter() - t0
        m["comm_bytes_down"] = float(down)
        m["comm_bytes_up"] = up
        state.history.append(m)
        return m

    def run(self, state: RunState) -> RunState:
        """Rounds ``state.round`` .. ``train.rounds``: a new run, or one resumed."""
        self.adopt(state)
        while state.round < self.cfg.train.rounds:
            m = self.step(state)
            for listener in self.listeners:
                t = time.perf_counter()
                listener.on_round(state, m)
                if listener.timing:  # what it cost, for the listeners after it
                    m[listener.timing] = m.get(listener.timing, 0.0) + time.perf_counter() - t
        for listener in self.listeners:
            listener.on_finish(state, self)
        return state


def evaluated(history: list[dict]) -> list[dict]:
    """The rounds that ended with an evaluation (of the test or the validation split)."""
    return [m for m in history if "acc_mean" in m or "val_acc_mean" in m]
