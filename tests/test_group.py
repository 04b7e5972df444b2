"""Batched multi-client training: G clients' steps in one backbone pass give what G
separate local updates give, for every algorithm (run on the CPU).

Clients of different sizes (so steps per epoch differ and finished clients drop out
of the lockstep), two local epochs (FedRep: a head phase, then a prompt phase), each
client with its own generator, optimizer and data order.
"""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from rayfed_bpt.algorithms import ClientData, ClientTask, create_algorithm, list_algorithms
from rayfed_bpt.catalog import options_of
from rayfed_bpt.config import TrainConfig
from rayfed_bpt.data import PartitionConfig, PartitionReader, write_partition
from rayfed_bpt.models import PromptedViT, create_backbone

SIZES = {0: 70, 1: 33, 2: 96}  # 3, 2 and 3 batches of 32 per epoch


def group_setup(digits4, folder):
    """The backbone and three clients of different sizes (test_plugins uses it too)."""
    reader = PartitionReader(write_partition(
        digits4, PartitionConfig("domain_mix", num_clients=3, seed=0), folder / "p3"))
    datas = {k: ClientData.from_shard(reader.load(k), n, 24, seed=0) for k, n in SIZES.items()}
    return PromptedViT(create_backbone()), datas


@pytest.fixture(scope="module")
def setup(digits4, tmp_path_factory):
    return group_setup(digits4, tmp_path_factory.mktemp("group"))


def _tasks(alg, datas, round=1):
    return [ClientTask(k, d, alg.init_personal(k), round) for k, d in datas.items()]


@pytest.mark.parametrize("name", list_algorithms())
def test_a_group_equals_its_clients_one_by_one(name, setup):
    check_group(name, *setup)


def check_group(name, backbone, datas):
    has_prompt = "prompt_len" in {f.name for f in fields(options_of(name))}
    options = {"prompt_len": 3} if has_prompt else {}
    train = TrainConfig(local_epochs=2, batch_size=32, lr=0.02)
    alg = create_algorithm(name, backbone, 10, train, options, seed=5, num_clients=3)
    assert len({d.num("train") for d in datas.values()}) == 3
    g = alg.init_global()
    alone = [alg.local_update(g, [t])[0] for t in _tasks(alg, datas)]
    together = alg.local_update(g, _tasks(alg, datas))
    for a, b in zip(alone, together):
        assert a.client_id == b.client_id and a.num_samples == b.num_samples
        for part in ("update", "personal"):
            x, y = getattr(a, part), getattr(b, part)
            assert x.keys() == y.keys()
            for key in x:
                torch.testing.assert_close(y[key], x[key], rtol=1e-4, atol=1e-5,
                                           msg=f"{name} client {a.client_id} {part} {key}")
        assert a.metrics.keys() == b.metrics.keys() and a.metrics
        for key in a.metrics:
            assert b.metrics[key] == pytest.approx(a.metrics[key], rel=1e-4, abs=1e-6), key
    # and the group really trained (Local sends nothing: its prompt is personal)
    start = {**g, **alg.init_personal(0)}
    trained = {**together[0].update, **together[0].personal}
    assert any(not torch.equal(start[k], v) for k, v in trained.items())

