"""A client's optimizer state as flat tensors (``train.optimizer_state=keep``): kept in
its personal state between rounds, checkpointed and sent across Ray like weights, never
pickled."""

from __future__ import annotations

import torch

from .client import State

#: personal-state keys of a client's kept optimizer state
OPTIM = "optim."


def save_optimizer(opt: torch.optim.Optimizer, key: str) -> State:
    """An optimizer's per-parameter state as flat tensors ``<key><param index>.<field>``
    (plain tensors: they checkpoint and cross Ray like weights; no pickling)."""
    return {f"{key}{i}.{f}": torch.as_tensor(v).detach().cpu().clone()
            for i, st in opt.state_dict()["state"].items() for f, v in st.items()}


def load_optimizer(opt: torch.optim.Optimizer, flat: State, key: str) -> None:
    """Restore what ``save_optimizer`` wrote under ``key`` (nothing there: a fresh start).
    Hyperparameters stay the current config's."""
    state: dict[int, dict] = {}
    for k, v in flat.items():
        if k.startswith(key):
            i, f = k[len(key):].split(".", 1)
            state.setdefault(int(i), {})[f] = v
    if state:
        opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
