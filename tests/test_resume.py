"""Resume is exact from every round boundary, and a crafted checkpoint never runs code.

Interruptions are injected at a chosen round (a listener that raises, or the
``runtime.faults`` hook), never by a timer racing the run.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import _runs
import pytest
from _runs import strip

from rayfed_bpt.engine import (
    CheckpointWriter,
    RoundListener,
    load_checkpoint,
    local_engine,
    run_reference,
    save_checkpoint,
)
from rayfed_bpt.engine.setup import torch_threads
from rayfed_bpt.errors import RayfedError
from rayfed_bpt.runtime.preflight import config_of_run


def small(part, *extra):
    return _runs.small(part, "train.rounds=4", "train.fraction=0.5", *extra)


class Crash(RoundListener):
    """Dies right after round ``at`` (after the checkpoint listener before it)."""

    def __init__(self, at: int):
        self.at = at

    def on_round(self, state, metrics):
        if state.round == self.at:
            raise KeyboardInterrupt(f"crash after round {self.at}")


@pytest.mark.parametrize("name, extra", [
    ("pfedbayespt", ()),
    ("fedavg_vpt", ("train.optimizer_state=keep",)),  # each client's Adam state resumes too
    pytest.param("pfedpg", (), marks=pytest.mark.slow),
    pytest.param("fedrep_vpt", ("train.optimizer_state=keep",), marks=pytest.mark.slow)])
def test_resume_from_every_round_boundary_is_bit_identical(name, extra, part4, tmp_path):
    cfg = small(part4, f"algorithm.name={name}", *extra)
    full = run_reference(cfg, log=None)
    rounds = cfg.train.rounds
    for k in range(1, rounds):
        run_dir = tmp_path / f"{name}-crash{k}"
        writer = CheckpointWriter(run_dir, cfg.to_dict(), every=1, rounds=rounds)
        with pytest.raises(KeyboardInterrupt), torch_threads(cfg.runtime.threads):
            engine = local_engine(cfg, [writer, Crash(k)])
            engine.run(engine.initial_state())
        state, saved_cfg = load_checkpoint(run_dir)  # a fresh process would see just this
        assert state.round == k and saved_cfg == cfg.to_dict()
        resumed = run_reference(cfg, log=None, state=state)
        assert strip(resumed) == strip(full), f"{name}: resume after round {k} differs"


def test_truncated_checkpoint_falls_back_to_the_previous_one(part4, tmp_path):
    cfg = small(part4, "algorithm.name=fedavg_vpt", "train.rounds=2")
    run_reference(cfg, log=None, listeners=[CheckpointWriter(tmp_path, cfg.to_dict(), 1, 2)])
    latest = tmp_path / "checkpoint.safetensors"
    latest.write_bytes(latest.read_bytes()[:-50])  # cut short, as by a full disk
    state, _ = load_checkpoint(tmp_path)
    assert state.round == 1  # the previous checkpoint, intact
    state.round = 2  # the resumed run redoes round 2: the damaged file must not become prev
    save_checkpoint(tmp_path, state, cfg.to_dict())
    latest.write_bytes(latest.read_bytes()[:-50])
    assert load_checkpoint(tmp_path)[0].round == 1
    (tmp_path / "checkpoint.prev.safetensors").write_bytes(b"")
    with pytest.raises(RayfedError, match="no readable checkpoint"):
        load_checkpoint(tmp_path)


class Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_pickle_checkpoint_is_refused_and_never_run(tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "pwned"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("seed: 0\n")
    for name in ("checkpoint.safetensors", "checkpoint.pt"):
        (run_dir / name).write_bytes(pickle.dumps(Payload(str(marker))))
        r = subprocess.run([sys.executable, "-m", "rayfed_bpt.cli", "run", "--resume",
                            str(run_dir)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "never" in r.stderr and "unpickl" in r.stderr, r.stderr
        assert not marker.exists()
        (run_dir / name).unlink()


@pytest.mark.slow  # 50 s; the default suite has driver recreation and Ctrl-C + --resume
def test_killed_driver_then_resume_matches_uninterrupted(part4, tmp_path):
    """The whole command stops after round 2 (the driver dies, no restarts allowed);
    `--resume` finishes with the numbers of the uninterrupted run, bit for bit."""
    out = tmp_path / "runs"
    args = ["--set", f"data.partition_dir={part4}", "data.max_train_per_client=64",
            "data.max_test_per_client=40", "train.rounds=4", "train.eval_every=1",
            "train.fraction=0.5", "algorithm.options.prompt_len=2",
            f"runtime.output_dir={out}", "runtime.run_name=r1", "runtime.num_actors=2",
            "runtime.faults=[driver_exit@2]", "runtime.max_driver_restarts=0"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    cli = [sys.executable, "-m", "rayfed_bpt.cli", "run", "--no-progress"]
    r = subprocess.run(cli + args, env=env, capture_output=True, text=True, timeout=600)
    run_dir = out / "r1"
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"rayfed-bpt run --resume {run_dir}" in r.stderr and "Traceback" not in r.stderr
    assert load_checkpoint(run_dir)[0].round == 2
    r = subprocess.run(cli + ["--resume", str(run_dir)], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "round 3/4" in r.stdout and "round 2/4" not in r.stdout  # lines only for new rounds
    final = load_checkpoint(run_dir)[0]
    assert final.round == 4
    reference = run_reference(config_of_run(run_dir), log=None)
    assert strip(final.history) == strip(reference)


def test_resume_needs_a_run_folder(tmp_path):
    r = subprocess.run([sys.executable, "-m", "rayfed_bpt.cli", "run", "--resume",
                        str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "is not a run folder" in r.stderr
