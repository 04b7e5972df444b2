"""Personal states that spill, incremental checkpoints, sampled evaluation.

The store's promise is that where a state lives (memory or a piece on disk) never
changes a number; its checkpoints write only what a round changed, detect a
damaged piece, and leave no piece behind that no checkpoint refers to.
"""

from __future__ import annotations

import json

import _runs
import numpy as np
import pytest
import torch

from rayfed_bpt.algorithms.evaluation import mean_ci95
from rayfed_bpt.engine import (
    CheckpointWriter,
    load_checkpoint,
    local_engine,
    run_reference,
    save_checkpoint,
)
from rayfed_bpt.engine.checkpoint import FORMAT_1
from rayfed_bpt.engine.loop import is_timing
from rayfed_bpt.engine.personal_store import PersonalStore, piece_path, resolve_hot
from rayfed_bpt.engine.setup import torch_threads
from rayfed_bpt.errors import RayfedError


def small(part, *extra):
    return _runs.small(part, "train.fraction=0.5", "algorithm.name=fedavg_vpt",
                       "train.optimizer_state=keep", *extra)


def numbers(history):
    return [{k: "nan" if v != v else v for k, v in m.items() if not is_timing(k)}
            for m in history]


def pieces_on_disk(run_dir):
    return {p.name.split(".")[0] for p in (run_dir / "personal").glob("*/*.safetensors")}


def manifest(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return json.loads(f.metadata()["rayfed_bpt"])["personal"]


def test_a_store_gives_back_what_it_was_given_from_memory_or_disk(tmp_path):
    init = {"w": torch.zeros(3)}
    store = PersonalStore(range(5), lambda k: {k2: v.clone() for k2, v in init.items()}, hot=2)
    states = {k: {"w": torch.randn(3), "m": torch.tensor([float(k)])} for k in range(4)}
    for k, s in states.items():
        store.put(k, s)
    assert store.in_memory() == 2 and store.writes == 2  # the two oldest spilled
    for k, s in states.items():
        got = store[k]
        assert got.keys() == s.keys() and all(torch.equal(got[n], s[n]) for n in s)
    assert torch.equal(store[4]["w"], init["w"]) and 4 not in store.pieces  # never trained
    store.put(3, {})  # nothing personal: the initial state, nothing kept
    assert 3 not in store.pieces and torch.equal(store[3]["w"], init["w"])
    flushed = store.flush(tmp_path / "personal")  # the spilled pieces move with it
    assert set(flushed) == {0, 1, 2}
    assert all(piece_path(tmp_path / "personal", sha).exists() for sha, _ in flushed.values())
    assert list(store.subset([2, 0])) == [2, 0] and 1 not in store.subset([2, 0])


def test_resolve_hot():
    assert resolve_hot("auto", 1024) == (None, 1024 * 2**20)  # auto: bytes, not a count
    assert resolve_hot(7, 1024) == (7, None)


def test_the_hot_set_is_bounded_in_bytes():
    """auto: as many states as the bytes allow; the least recently used spill, the one in
    use stays even when it alone is larger."""
    states = {k: {"w": torch.full((1000,), float(k))} for k in range(5)}  # 4,000 bytes each
    store = PersonalStore(range(5), hot_bytes=10_000)
    for k in range(5):
        store.put(k, states[k])
    assert sorted(store._memory) == [3, 4] and store._bytes == 8000  # 2 of 4,000 bytes fit
    assert sorted(store.pieces) == [0, 1, 2]  # spilled (written before leaving memory)
    assert torch.equal(store[0]["w"], states[0]["w"])  # read back: 0 in, 3 out
    assert sorted(store._memory) == [0, 4] and store.reads == 1
    big = PersonalStore(range(2), hot_bytes=100)
    big.put(0, states[0])
    assert list(big._memory) == [0]


@pytest.mark.parametrize("hot", ["1", pytest.param("auto", marks=pytest.mark.slow)])
def test_resume_with_a_spilling_store_is_bit_identical(hot, part4, tmp_path):
    """Kept Adam state, 4 clients, 2 a round; ``personal_memory=1`` spills all but one
    state to disk between uses (checked: the store wrote pieces before any checkpoint
    asked, and read them back)."""
    cfg = small(part4, f"runtime.personal_memory={hot}", "train.rounds=4")
    full_engine = local_engine(cfg)
    with torch_threads(cfg.runtime.threads):
        full = full_engine.run(full_engine.initial_state())
    if hot == "1":
        assert full.personal.reads > 0 and full.personal.in_memory() == 1
    reference = run_reference(small(part4, "train.rounds=4"), log=None)
    assert numbers([m for m in full.history if "acc_mean" in m]) == numbers(reference)

    class Crash(CheckpointWriter):
        def on_round(self, state, metrics):
            super().on_round(state, metrics)
            if state.round == 2:
                raise KeyboardInterrupt

    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt), torch_threads(cfg.runtime.threads):
        engine = local_engine(cfg, [Crash(run_dir, cfg.to_dict(), 1, 4)])
        engine.run(engine.initial_state())
    state, _ = load_checkpoint(run_dir)
    assert state.round == 2 and state.personal.in_memory() == 0  # read when asked for
    resumed = run_reference(cfg, log=None, state=state)
    assert numbers(resumed) == numbers(reference)


def test_checkpoints_write_only_what_a_round_changed_and_collect_the_rest(part4, tmp_path):
    cfg = small(part4, "train.rounds=4")
    seen: list[tuple[set, dict, dict, set]] = []

    class Watch(CheckpointWriter):
        def on_round(self, state, metrics):
            before = pieces_on_disk(self.run_dir) if self.run_dir.exists() else set()
            super().on_round(state, metrics)
            after = pieces_on_disk(self.run_dir)
            seen.append((after - before, manifest(self.run_dir / "checkpoint.safetensors"),
                         manifest(self.run_dir / "checkpoint.prev.safetensors")
                         if state.round > 1 else {}, after))

    from rayfed_bpt.engine.setup import sample_clients

    run_reference(cfg, log=None, listeners=[Watch(tmp_path, cfg.to_dict(), 1, 4)])
    for r, (new, latest, prev, on_disk) in enumerate(seen):
        trained = sample_clients(4, cfg.train, cfg.seed, r)
        # Adam state changes every time: one new piece per trained client, no other
        assert len(new) == len(trained), (r, new, trained)
        assert {latest[str(k)][0] for k in trained} == new
        # what is on disk is exactly what the two checkpoints refer to
        live = {p[0] for p in latest.values()} | {p[0] for p in prev.values()}
        assert on_disk == live


def test_a_damaged_piece_is_detected_and_a_missing_one_falls_back(part4, tmp_path):
    cfg = small(part4)
    run_reference(cfg, log=None, listeners=[CheckpointWriter(tmp_path, cfg.to_dict(), 1, 3)])
    latest = manifest(tmp_path / "checkpoint.safetensors")
    prev = {p[0] for p in manifest(tmp_path / "checkpoint.prev.safetensors").values()}
    client, (sha, _) = next((int(c), p) for c, p in latest.items() if p[0] not in prev)
    path = piece_path(tmp_path / "personal", sha)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit, same size
    path.write_bytes(bytes(data))
    state, _ = load_checkpoint(tmp_path)
    assert state.round == 3
    with pytest.raises(RayfedError, match="damaged"):
        state.personal[client]
    path.unlink()  # gone: the latest checkpoint is incomplete, the previous one is whole
    state, _ = load_checkpoint(tmp_path)
    assert state.round == 2
    prev = (tmp_path / "checkpoint.prev.safetensors").read_bytes()
    state.round = 3  # a resumed run redoes round 3: the incomplete latest must not become prev
    save_checkpoint(tmp_path, state, cfg.to_dict())
    assert (tmp_path / "checkpoint.prev.safetensors").read_bytes() == prev
    assert load_checkpoint(tmp_path)[0].round == 3


def test_a_format_1_checkpoint_is_still_read(part4, tmp_path):
    from safetensors.torch import save_file

    cfg = small(part4)
    engine = local_engine(cfg)
    g = engine.alg.init_global()
    kept = {"opt0.step": torch.tensor(3.0), "opt0.x": torch.arange(4.0)}
    tensors = {**{f"global/{k}": v for k, v in g.items()},
               **{f"personal/1/{k}": v for k, v in kept.items()}}
    meta = {"format": FORMAT_1, "round": 1, "clients": [0, 1, 2, 3], "history": [],
            "mlflow_run_id": None, "config": cfg.to_dict()}
    save_file(tensors, str(tmp_path / "checkpoint.safetensors"),
              metadata={"rayfed_bpt": json.dumps(meta)})
    state, _ = load_checkpoint(tmp_path)
    assert state.round == 1 and torch.equal(state.personal[1]["opt0.x"], kept["opt0.x"])
    assert all(torch.equal(state.global_state[k], v) for k, v in g.items())


def test_sampled_evaluation_is_seeded_and_the_last_round_covers_everyone(part4):
    cfg = small(part4, "train.eval_fraction=0.5", "train.rounds=3")
    history = run_reference(cfg, log=None)
    assert [m.get("eval_clients") for m in history] == [2.0, 2.0, None]
    assert all(m["acc_mean_ci95"] >= 0 for m in history[:2])
    engine = local_engine(cfg)
    assert engine.eval_clients(0) == engine.eval_clients(1)  # the same share each time
    cfg.train.eval_resample = True
    fresh = local_engine(cfg)
    assert len({tuple(fresh.eval_clients(r)) for r in range(8)}) > 1
    cfg.train.eval_final_all = False
    assert len(local_engine(cfg).eval_clients(2)) == 2


def test_the_sample_interval_covers_the_population_mean_95_percent_of_the_time():
    """Checked against the population it is drawn from: 4,000 samples of 40 of 500."""
    rng = np.random.default_rng(0)
    population = rng.beta(2, 5, size=500)
    hits = 0
    for _ in range(4000):
        x = rng.choice(population, 40, replace=False)
        hits += abs(x.mean() - population.mean()) <= mean_ci95(x, len(population))
    assert 0.935 <= hits / 4000 <= 0.965
    assert mean_ci95(population, len(population)) == 0.0  # the whole population: exact


@pytest.mark.slow  # 30 s; the default suite reads every layout row for row (test_shards)
def test_a_run_on_copied_rows_equals_the_run_on_row_numbers(digits4, part4, tmp_path):
    """The same run on the indices partition (part4), a packed copy and a copy a file per
    client: identical numbers."""
    from rayfed_bpt.data import PartitionConfig, PartitionReader, shards, write_partition

    recipe = PartitionConfig("domain_mix", num_clients=4, seed=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shards, "PACK", 3)  # 4 clients: two packs
        packed = write_partition(digits4, recipe, tmp_path / "packed", layout="packed")
    files = write_partition(digits4, recipe, tmp_path / "files", layout="files")
    assert PartitionReader(packed).layout == "packed" and PartitionReader(part4).layout == \
        "indices"
    assert len(list(packed.glob("pack_*.arrow"))) == 2
    reference = numbers(run_reference(small(part4), log=None))
    assert numbers(run_reference(small(packed), log=None)) == reference
    assert numbers(run_reference(small(files), log=None)) == reference
