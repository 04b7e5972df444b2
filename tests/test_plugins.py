"""Plugins from outside the package: the example's method (FedProx on prompts) against
a hand computation, in-process == Ray actors (through a recreated driver too), resume
bit-identical; entry points, name clashes, importer and partitioner plugins, the API.

The sweep, the suite and ``ray job submit`` with the plugin run where the page that
documents them is tested (test_docs.py, test_cluster.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _runs import strip

from rayfed_bpt.config import load_config
from rayfed_bpt.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "fedprox_plugin"


@pytest.fixture(scope="module")
def on_path():
    """The example's folder on this process's path and on that of Ray workers it starts."""
    before = os.environ.get("PYTHONPATH")
    sys.path.insert(0, str(EXAMPLE))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(EXAMPLE), before]))
    yield
    sys.path.remove(str(EXAMPLE))
    if before is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = before


@pytest.fixture(scope="module")
def plugin_ray(on_path):
    """A local Ray started after PYTHONPATH names the example (its workers import it)."""
    import ray

    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def fedprox_cfg(part, tmp_path, *extra):
    return load_config(None, [
        f"data.partition_dir={part}", "data.max_train_per_client=64",
        "data.max_test_per_client=40", "train.rounds=3", "train.eval_every=1",
        "train.fraction=0.5", "algorithm.name=fedprox_vpt", "algorithm.options.mu=0.5",
        "algorithm.options.prompt_len=2", f"runtime.output_dir={tmp_path}", *extra],
        plugins=["rayfed_fedprox"])


def test_proximal_loss_is_ce_plus_half_mu_squared_distance(on_path, part4):
    """The plugin's loss against an independent computation: cross-entropy of the head on
    the features, plus mu/2 times the squared distance of every weight to its start."""
    from rayfed_bpt.algorithms import create_algorithm
    from rayfed_bpt.config import TrainConfig
    from rayfed_bpt.models import PromptedViT, create_backbone
    from rayfed_bpt.plugins import import_plugins

    import_plugins(["rayfed_fedprox"])
    torch.manual_seed(0)
    alg = create_algorithm("fedprox_vpt", PromptedViT(create_backbone("builtin")), 10,
                           TrainConfig(), {"mu": 0.7, "prompt_len": 2})
    module = alg.load(alg.init_global(), {})
    start = {k: v.clone() for k, v in module.state_dict().items()}
    alg.before_training(module, None)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    feats, y = torch.randn(6, alg.backbone.embed_dim), torch.randint(0, 10, (6,))
    loss, parts = alg.step_loss(module, feats, y)
    now = module.state_dict()
    w, b = now["head.weight"], now["head.bias"]
    dist = sum(float(((now[k].double() - start[k].double()) ** 2).sum()) for k in start)
    want = float(F.cross_entropy(feats @ w.T + b, y)) + 0.5 * 0.7 * dist
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5)
    assert float(parts["prox"]) == pytest.approx(dist, rel=1e-5)
    loss.backward()  # the prompt gets no cross-entropy gradient here (features are given):
    want_g = 0.7 * (module.prompt - start["prompt"]).detach()  # only the pull to its start
    assert torch.allclose(module.prompt.grad, want_g, atol=1e-6)


def test_plugin_group_step_equals_its_clients_one_by_one(on_path, digits4, tmp_path):
    """The base class's batched group step serves a plugin that wrote only its loss."""
    from test_group import check_group, group_setup

    from rayfed_bpt.plugins import import_plugins

    import_plugins(["rayfed_fedprox"])
    check_group("fedprox_vpt", *group_setup(digits4, tmp_path))


def test_plugin_on_ray_actors_equals_in_process_through_a_recreated_driver(
        part4, tmp_path, plugin_ray):
    """Client actors and a recreated driver actor (dies after round 1's checkpoint, comes
    back from it) import the plugin from the run's config: the same numbers as the
    single-process reference."""
    from rayfed_bpt.engine import run_reference
    from rayfed_bpt.runtime import run_experiment

    cfg = fedprox_cfg(part4, tmp_path, "runtime.num_actors=2", "runtime.cpus_per_actor=0.5",
                      "runtime.faults=[driver_exit@1]")
    s = run_experiment(cfg, show_progress=False, log=None)
    assert s["driver_restarts"] == 1
    assert len(s["history"]) == 3 and s["history"][-1]["train_prox"] > 0
    assert strip(s["history"]) == strip(run_reference(cfg, log=None))
    saved = (Path(s["run_dir"]) / "config.yaml").read_text()
    assert "rayfed_fedprox" in saved  # a --resume imports it again


def test_plugin_resumes_bit_identically_from_every_round(part4, tmp_path, on_path):
    from rayfed_bpt.engine import (
        CheckpointWriter,
        RoundListener,
        load_checkpoint,
        local_engine,
        run_reference,
    )
    from rayfed_bpt.engine.setup import torch_threads

    class Crash(RoundListener):
        def __init__(self, at):
            self.at = at

        def on_round(self, state, metrics):
            if state.round == self.at:
                raise KeyboardInterrupt

    cfg = fedprox_cfg(part4, tmp_path, "train.optimizer_state=keep")
    full = run_reference(cfg, log=None)
    for k in (1, 2):
        run_dir = tmp_path / f"crash{k}"
        with pytest.raises(KeyboardInterrupt), torch_threads(cfg.runtime.threads):
            engine = local_engine(cfg, [CheckpointWriter(run_dir, cfg.to_dict(), every=1,
                                                         rounds=3), Crash(k)])
            engine.run(engine.initial_state())
        state, saved = load_checkpoint(run_dir)
        assert saved["plugins"] == ["rayfed_fedprox"]
        assert strip(run_reference(cfg, log=None, state=state)) == strip(full)


def test_entry_point_of_an_installed_package_is_found_and_listed(tmp_path):
    """The example installed (into a folder put on PYTHONPATH: this environment stays as
    it is) is found by its entry point, with no --import; `list` says where from."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(target),
                    str(EXAMPLE)], check=True, timeout=300, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    r = subprocess.run([sys.executable, "-m", "rayfed_bpt.cli", "list", "algorithms"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    [line] = [x for x in r.stdout.splitlines() if x.startswith("fedprox_vpt")]
    assert "rayfed-fedprox (entry point rayfed_bpt.algorithms:fedprox_vpt)" in line
    assert "pfedbayespt" in r.stdout and "built-in" in r.stdout
    r = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        from rayfed_bpt.algorithms.registry import lookup
        print(lookup("fedprox_vpt")[0].__module__)""")], env=env, capture_output=True,
        text=True, timeout=120)
    assert r.stdout.strip() == "rayfed_fedprox", r.stderr  # a lookup loads entry points


def test_a_broken_installed_plugin_is_skipped_with_a_warning_and_named_when_asked_for(
        tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "rayfed-broken"
        version = "0.1"
        [project.entry-points."rayfed_bpt.algorithms"]
        broken_vpt = "broken_mod"
        [tool.setuptools]
        py-modules = ["broken_mod"]
        """))
    (pkg / "broken_mod.py").write_text("import no_such_dependency_here\n")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(target), str(pkg)],
                   check=True, timeout=300, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    r = subprocess.run([sys.executable, "-m", "rayfed_bpt.cli", "list", "algorithms"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "pfedbayespt" in r.stdout  # the built-ins still work
    assert "the algorithm 'broken_vpt' of rayfed-broken" in r.stderr  # the warning
    r = subprocess.run([sys.executable, "-c", "from rayfed_bpt.algorithms.registry import "
                        "lookup; lookup('broken_vpt')"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert "ConfigError: the algorithm 'broken_vpt' of rayfed-broken (entry point " \
           "rayfed_bpt.algorithms:broken_vpt) cannot be loaded (ModuleNotFoundError" in r.stderr


def _module(tmp_path: Path, name: str, body: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    if str(tmp_path) not in sys.path:
        sys.path.insert(0, str(tmp_path))
    return name


def test_a_name_that_is_taken_is_refused_naming_both(tmp_path):
    from rayfed_bpt.plugins import import_plugins

    name = _module(tmp_path, "clash_alg", """
        from rayfed_bpt.algorithms import register_algorithm
        from rayfed_bpt.algorithms.fedavg_vpt import FedAvgVPT

        @register_algorithm()
        class Mine(FedAvgVPT):
            name = "fedavg_vpt"
        """)
    with pytest.raises(ConfigError, match=r"algorithm 'fedavg_vpt' of module clash_alg "
                       r"\(Mine\) clashes with .* built-in \(FedAvgVPT\)"):
        import_plugins([name])
    part = _module(tmp_path, "clash_part", """
        from rayfed_bpt.data import register_partitioner

        @register_partitioner("iid")
        def mine(cfg, labels, domains, num_classes, num_domains, rng):
            return labels, None
        """)
    with pytest.raises(ConfigError, match="partitioner 'iid' of module clash_part"):
        import_plugins([part])


def test_a_pool_is_one_class_registered_by_name(tmp_path, part4):
    """A new client pool is one file: a class with @register_pool, chosen by runtime.pool
    (checked where the config is made), made by the engine's one factory."""
    from rayfed_bpt.catalog import pool_names
    from rayfed_bpt.data import PartitionReader
    from rayfed_bpt.engine import Engine, PoolContext, make_pool, run_reference

    name = _module(tmp_path, "counting_pool", """
        from rayfed_bpt.catalog import register_pool
        from rayfed_bpt.engine.host import InProcessPool

        @register_pool("counting")
        class CountingPool(InProcessPool):
            units = 0

            def train(self, global_state, personal, round):
                CountingPool.units += len(personal)
                return super().train(global_state, personal, round)
        """)
    with pytest.raises(ConfigError, match=r"runtime.pool='counting'; allowed: \['ray_actors'"):
        load_config(None, ["runtime.pool=counting"])
    cfg = load_config(None, [f"data.partition_dir={part4}", "runtime.pool=counting",
                             "data.max_train_per_client=24", "data.max_test_per_client=12",
                             "train.rounds=1", "algorithm.name=fedavg_vpt",
                             "algorithm.options.prompt_len=1", "train.fraction=0.5"], [name])
    assert "counting" in pool_names()
    reader = PartitionReader(part4)
    pool = make_pool(PoolContext(cfg, reader))
    assert type(pool).__name__ == "CountingPool" and pool.group_size == 1
    engine = Engine(cfg, pool.host.alg, pool, reader.client_ids, reader.info.domain_names)
    state = engine.run(engine.initial_state())
    assert type(pool).units == 2
    assert state.history[-1]["acc_mean"] == run_reference(cfg, log=None)[-1]["acc_mean"]


def test_plugin_importer_and_partitioner_prepare_and_split_a_dataset(tmp_path):
    from rayfed_bpt.config import DataConfig
    from rayfed_bpt.data import PartitionReader, load_dataset, prepare
    from rayfed_bpt.data.recipe import resolve_partition
    from rayfed_bpt.plugins import import_plugins, origin

    name = _module(tmp_path, "tiny_source", """
        import numpy as np
        from rayfed_bpt.data import DatasetInfo, make_table, register_importer
        from rayfed_bpt.data import register_partitioner

        @register_importer("tiny", needs_path=False)
        def tiny(req):
            rng = np.random.default_rng(req.seed)
            n = 200
            info = DatasetInfo("tiny", ["a", "b"], ["x", "y"], (8, 8, 3))
            return make_table(info, rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
                              np.arange(n) % 2, (np.arange(n) // 2) % 2,
                              np.where(np.arange(n) % 5 == 0, "test", "train")), info

        @register_partitioner("by_domain_parity")
        def by_domain_parity(cfg, labels, domains, num_classes, num_domains, rng):
            w = np.zeros((cfg.num_clients, num_domains))
            w[np.arange(cfg.num_clients), np.arange(cfg.num_clients) % num_domains] = 1
            return domains, w
        """)
    import_plugins([name])
    assert origin("importers", "tiny") == "module tiny_source"
    out = prepare("tiny", out=tmp_path / "tiny.arrow")
    assert len(load_dataset(out)) == 200
    data = DataConfig(dataset=str(out), partitioner="by_domain_parity", num_clients=4,
                      min_samples=1)
    reader = PartitionReader(resolve_partition(data, 0))
    for k in range(4):  # client k holds only domain k % 2
        assert set(reader.load(k).domains("train").tolist()) == {k % 2}


def test_bad_plugin_input_is_a_clear_message_before_ray(tmp_path):
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "rayfed_bpt.cli", "run", "--import",
                        "no_such_plugin_mod", "--set", f"runtime.output_dir={tmp_path}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "plugin module 'no_such_plugin_mod' cannot be imported" in r.stderr
    assert "--working-dir" in r.stderr and time.time() - t < 10
    assert not any(tmp_path.iterdir())  # no run folder, no MLflow store
    with pytest.raises(ConfigError, match="not a module name"):
        load_config(None, ["plugins=[examples/fedprox_plugin/rayfed_fedprox.py]"])
    dep = _module(tmp_path, "needs_a_dependency", "import not_installed_anywhere_dep\n")
    with pytest.raises(ConfigError, match="'needs_a_dependency' needs "
                                          "'not_installed_anywhere_dep', which is not installed"):
        load_config(None, [f"plugins=[{dep}]"])
    from rayfed_bpt.experiments.paper import paper_suite

    with pytest.raises(ConfigError, match="--add-method .*'nope'.*not a registered"):
        paper_suite(quick=True).with_methods(["nope"])


def test_api_imports_neither_ray_nor_torch_and_builds_checked_configs():
    code = textwrap.dedent("""
        import sys
        from rayfed_bpt import api
        cfg = api.config({"train": {"rounds": 4}}, {"algorithm.options.beta": 0.01},
                         seed=3, data={"num_clients": 6})
        assert cfg.train.rounds == 4 and cfg.algorithm.options == {"beta": 0.01}
        assert cfg.seed == 3 and cfg.data.num_clients == 6 and cfg.train.lr == 0.01
        from rayfed_bpt.errors import ConfigError
        try:
            api.config(overrides=["train.roundz=1"])
        except ConfigError as e:
            assert "train.roundz" in str(e)
        else:
            raise SystemExit("a bad key was accepted")
        print(sorted(m for m in ("ray", "torch") if m in sys.modules))
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
