"""The round engine and what it runs on: no Ray here.

``Engine`` is the one federated loop (sample, train, aggregate, evaluate, report);
a ``ClientPool`` is where clients train, chosen by name (``make_pool``) —
``InProcessPool`` here (``host``), the Ray actor pool in ``rayfed_bpt.runtime``.
``setup`` builds a run's objects from its config, ``checkpoint`` saves and restores
a ``RunState``, ``reference`` runs a whole run in this process.

Names are loaded on first use: the torch-free ``rayfed-bpt run`` entry process
reads checkpoints' headers through this package without importing torch.
"""

from importlib import import_module

_HOME = {
    "CheckpointWriter": "checkpoint", "checkpoint_round": "checkpoint",
    "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "Engine": "loop", "evaluated": "loop", "state_bytes": "loop",
    "ClientHost": "host", "InProcessPool": "host",
    "ClientPool": "pool", "PoolContext": "pool", "make_pool": "pool",
    "evaluate_run": "reference", "local_engine": "reference", "run_reference": "reference",
    "RoundListener": "state", "RunState": "state",
}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_HOME[name]}", __name__), name)


__all__ = sorted(_HOME)
