"""Beyond the clients that trained: new clients (``data.new_clients``) and unseen domains
(``data.ood_domains``), evaluated zero-shot and after ``train.adapt_rounds`` local updates."""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from _runs import strip

from rayfed_bpt.algorithms import list_algorithms
from rayfed_bpt.catalog import options_of
from rayfed_bpt.config import PartitionConfig, load_config
from rayfed_bpt.data import PartitionReader, partition_indices
from rayfed_bpt.data.recipe import partition_folder, resolve_partition
from rayfed_bpt.errors import ConfigError, DataError
from rayfed_bpt.plugins import origin

BUILT_IN = [n for n in list_algorithms() if origin("algorithms", n) == "built-in"]
#: a tiny run with both held-out populations: 5 dealt clients, one of them new, and the
#: rotate domain as one unseen-domain client
HELD_OUT = ("data.dataset=digits4+rotate", "data.num_clients=5", "data.new_clients=0.25",
            "data.ood_domains=[rotate]", "data.max_train_per_client=32",
            "data.max_test_per_client=24", "train.rounds=2", "train.eval_every=1",
            "train.fraction=1.0")
KEYS = ("new_acc_mean", "new_acc_adapted_mean", "new_nll_mean", "new_ece_adapted_mean",
        "ood_acc_mean", "ood_acc_adapted_mean", "ood_domain_acc.rotate",
        "ood_domain_acc_adapted.rotate")  # as MLflow names them ("/" is a ".")


def test_held_out_domains_leave_every_dealt_client_and_become_one_client_each(digits4):
    names = digits4.info.domain_names
    is_train = digits4.splits == "train"
    cfg = PartitionConfig("domain_mix", num_clients=6, seed=3, ood_domains=[names[2]])
    part = partition_indices(cfg, digits4.labels, digits4.domains, is_train,
                             digits4.info.num_classes, digits4.info.num_domains, None, names)
    held = digits4.domains == 2
    assert len(part.train) == len(part.test) == 7 and part.ood == {names[2]: 6}
    for k in range(6):
        assert not held[part.train[k]].any() and not held[part.test[k]].any()
    assert np.array_equal(part.train[6], np.flatnonzero(held & is_train))
    assert np.array_equal(part.test[6], np.flatnonzero(held & ~is_train))
    dealt = np.concatenate(part.train[:6])  # every other train row dealt, once
    assert np.array_equal(np.sort(dealt), np.flatnonzero(~held & is_train))


def test_new_clients_are_a_seeded_choice_that_leaves_the_deal_as_it_was(digits4):
    args = (digits4.labels, digits4.domains, digits4.splits == "train",
            digits4.info.num_classes, digits4.info.num_domains)
    plain = partition_indices(PartitionConfig(num_clients=8, seed=1), *args)
    held = partition_indices(PartitionConfig(num_clients=8, seed=1, new_clients=0.25), *args)
    again = partition_indices(PartitionConfig(num_clients=8, seed=1, new_clients=2), *args)
    other = [partition_indices(PartitionConfig(num_clients=8, seed=s, new_clients=2), *args).new
             for s in range(2, 6)]
    assert plain.new == [] and len(held.new) == 2 and held.new == again.new
    assert any(o != held.new for o in other)  # the seed chooses them
    assert all(np.array_equal(a, b) for a, b in zip(plain.train, held.train))
    assert all(np.array_equal(a, b) for a, b in zip(plain.test, held.test))


def test_a_recipe_without_held_out_keys_keeps_its_folder_name():
    """The folder names main gave before these keys existed (a partition is reused)."""
    assert partition_folder(Path("digits4.arrow"), PartitionConfig()).name == \
        "digits4-domain_mix-da0.5-20c-s0-6f64fe4c"
    assert partition_folder(Path("x.arrow"), PartitionConfig(
        "dirichlet", label_alpha=0.3, num_clients=7)).name == "x-dirichlet-la0.3-7c-s0-4ef1d977"
    assert partition_folder(Path("digits4.arrow"), PartitionConfig(new_clients=0.25)).name != \
        "digits4-domain_mix-da0.5-20c-s0-6f64fe4c"


def test_bad_held_out_settings_are_refused_with_the_fix(digits4):
    names = digits4.info.domain_names
    args = (digits4.labels, digits4.domains, digits4.splits == "train",
            digits4.info.num_classes, digits4.info.num_domains, None, names)
    with pytest.raises(DataError, match=r"names \['sketch'\], not a domain.*its domains"):
        partition_indices(PartitionConfig(num_clients=4, ood_domains=["sketch"]), *args)
    with pytest.raises(DataError, match="holds out every domain"):
        partition_indices(PartitionConfig(num_clients=4, ood_domains=list(names)), *args)
    # three domains held out of a tiny set: the one left cannot fill every client
    labels, domains = np.arange(40) % 10, np.repeat([0, 1, 2, 3], 10)
    is_train = np.tile([True] * 8 + [False] * 2, 4)
    with pytest.raises(DataError, match=r"ood_domains=\['b', 'c', 'd'\] held out of training: "
                                        "12 clients but only 8 training examples"):
        partition_indices(PartitionConfig(num_clients=12, min_samples=0,
                                          ood_domains=["b", "c", "d"]),
                          labels, domains, is_train, 10, 4, None, ["a", "b", "c", "d"])
    for bad, msg in [("data.new_clients=1.5", "whole number"),
                     ("data.new_clients=20", "leave at least one client"),
                     ("data.ood_domains=[]", "list of domain names"),
                     ("data.ood_domains=[rotate,rotate]", "names a domain twice"),
                     ("train.eval_new=sometimes", "allowed")]:
        with pytest.raises(ConfigError, match=msg):
            load_config(None, [bad])


#: in the default run; every other registered algorithm in the slow set (`pytest -m slow`)
DEFAULT_RUN = ("pfedbayespt", "fedavg_vpt", "fedper_vpt", "pfedpg")


@pytest.mark.parametrize("algorithm", [a if a in DEFAULT_RUN else
                                       pytest.param(a, marks=pytest.mark.slow)
                                       for a in BUILT_IN])
def test_every_algorithm_logs_new_and_unseen_domain_metrics_to_mlflow(algorithm, data_root,
                                                                       tmp_path):
    from mlflow.tracking import MlflowClient

    from rayfed_bpt.engine.reference import local_engine
    from rayfed_bpt.tracking import MlflowListener

    short = ([] if "prompt_len" not in {f.name for f in fields(options_of(algorithm))}
             else ["algorithm.options.prompt_len=2"])
    cfg = load_config(None, [f"algorithm.name={algorithm}", *HELD_OUT, *short])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlf = MlflowListener(uri, "gen", tmp_path / "art", tmp_path / "run", {}, None, print)
    run_id = mlf.start(None)
    engine = local_engine(cfg, [mlf])
    state = engine.run(engine.initial_state())
    mlf.finish()
    reader = PartitionReader(resolve_partition(cfg.data, cfg.seed))
    assert len(reader.new_clients) == 1 and reader.ood_clients == {"rotate": 5}
    assert engine.client_ids == reader.training_ids and len(engine.client_ids) == 4
    assert sorted(state.personal.client_ids) == engine.client_ids  # the held out never train
    logged = MlflowClient(uri).get_run(run_id).data.metrics
    for key in KEYS:
        assert math.isfinite(logged[key]), key
        assert [h.step for h in MlflowClient(uri).get_metric_history(run_id, key)] == [2]
    assert "new_acc_mean" not in state.history[0]  # train.eval_new=end: the last round only


def test_zero_shot_and_adapted_accuracy_match_an_independent_computation(data_root):
    """fedavg_vpt: zero-shot is the global model on each new client's test split; adapted
    is that client's own local update (as in a round, seeded by the round after the last)
    and then the model it ends with."""
    from rayfed_bpt.algorithms.base import ClientTask
    from rayfed_bpt.engine.reference import local_engine

    cfg = load_config(None, [*HELD_OUT, "algorithm.name=fedavg_vpt", "train.adapt_rounds=1"])
    engine = local_engine(cfg)
    state = engine.run(engine.initial_state())
    alg, host = engine.pool.host.alg, engine.pool.host
    zero, adapted = [], []
    for k in engine.held_out["new_"] + engine.held_out["ood_"]:
        data = host.client(k)
        y = data.labels["test"].numpy()
        p = alg.predict_client(state.global_state, {}, data, "test", 1)
        zero.append((p.argmax(-1).numpy() == y).mean())
        (res,) = alg.local_update(state.global_state, [ClientTask(k, data, {}, 2)])
        p = alg.predict_client(res.update, {}, data, "test", 1)
        adapted.append((p.argmax(-1).numpy() == y).mean())
    last = state.history[-1]
    assert last["new_acc_mean"] == pytest.approx(zero[0], abs=1e-12)
    assert last["ood_acc_mean"] == pytest.approx(zero[1], abs=1e-12)
    assert last["new_acc_adapted_mean"] == pytest.approx(adapted[0], abs=1e-12)
    assert last["ood_acc_adapted_mean"] == pytest.approx(adapted[1], abs=1e-12)
    assert adapted != zero  # the adaptation did something


@pytest.mark.slow
def test_held_out_clients_on_ray_actors_equal_the_reference(data_root, tmp_path, local_ray):
    """``rayfed-bpt run``'s runtime: held-out clients evaluated (and adapted) by the client
    actors, each evaluation (``train.eval_new=each``), numbers equal to the in-process
    loop's, in MLflow."""
    from mlflow.tracking import MlflowClient

    from rayfed_bpt.engine import run_reference
    from rayfed_bpt.runtime import run_experiment

    cfg = load_config(None, [*HELD_OUT, "algorithm.name=pfedbayespt", "train.eval_new=each",
                             "runtime.num_actors=2", "runtime.cpus_per_actor=0.5",
                             f"runtime.output_dir={tmp_path}"])
    summary = run_experiment(cfg, show_progress=False, log=None)
    assert strip(summary["history"]) == strip(run_reference(cfg, log=None))
    assert all("new_acc_adapted_mean" in m for m in summary["history"])
    client = MlflowClient(summary["tracking_uri"])
    for key in KEYS:
        steps = [h.step for h in client.get_metric_history(summary["mlflow_run_id"], key)]
        assert steps == [1, 2], key


def test_new_clients_are_sampled_at_each_evaluation_as_the_others_are(data_root):
    """``train.eval_new=each`` with ``train.eval_fraction``: a seeded share of the new
    clients (with its interval) at intermediate evaluations, every one at the last."""
    from rayfed_bpt.engine import run_reference

    cfg = load_config(None, [*HELD_OUT, "algorithm.name=fedavg_vpt", "data.num_clients=8",
                             "data.new_clients=4", "train.eval_new=each",
                             "train.eval_fraction=0.5", "algorithm.options.prompt_len=2"])
    first, last = run_reference(cfg, log=None)
    assert first["new_eval_clients"] == 2 and first["eval_clients"] == 2
    assert math.isfinite(first["new_acc_mean_ci95"])
    assert math.isfinite(first["new_acc_adapted_mean_ci95"])
    assert "new_eval_clients" not in last and "new_acc_mean_ci95" not in last
    assert "ood_eval_clients" not in first  # one client per unseen domain: never sampled
