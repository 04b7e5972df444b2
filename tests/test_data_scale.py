"""Data at paper scale on the CPU, in seconds: more 224-pixel images than one Arrow array
holds, clients that read rows in place (never a split in memory), a client cache
bounded in bytes, and a round trained from JPEG-encoded storage."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from rayfed_bpt.config import load_config
from rayfed_bpt.data import (
    DatasetInfo,
    PartitionConfig,
    PartitionReader,
    load_dataset,
    make_table,
    prepare,
    save_dataset,
    write_partition,
)
from rayfed_bpt.data.arrow_io import write_batches
from rayfed_bpt.data.schema import rows_per_batch
from rayfed_bpt.engine.setup import load_client

N = 14_300  # one more than the 14,266 images at 224 px that fit one Arrow array


@pytest.mark.slow  # 10 s: 2.2 GB written, hashed and read
def test_more_images_at_224_than_one_arrow_array_holds(tmp_path):
    info = DatasetInfo("zeros", ["a", "b"], ["d"], (224, 224, 3))
    labels = np.arange(N) % 2
    images = np.zeros((N, 224, 224, 3), np.uint8)  # untouched pages: no RAM
    images[N - 1] = 7  # the last image, in the last batch
    splits = np.where(np.arange(N) % 5, "train", "test")
    table = make_table(info, images, labels, np.zeros(N), splits)
    with pytest.raises(pa.ArrowCapacityError):  # what one record batch meets (no disk)
        write_batches(table, pa.MockOutputStream())
    sink = pa.MockOutputStream()
    write_batches(table, sink, rows_per_batch(info))
    assert sink.size() > 2**31
    path = save_dataset(table, info, tmp_path / "zeros.arrow")
    ds = load_dataset(path, verify=False)
    assert len(ds) == N and ds.table.column("image").num_chunks == -(-N // rows_per_batch(info))
    picked = ds.image_column.take([N - 1, 0, rows_per_batch(info)])  # across batches
    assert picked.shape == (3, 224, 224, 3) and (picked[0] == 7).all() and not picked[1:].any()
    part = write_partition(ds, PartitionConfig("iid", num_clients=2, seed=0), tmp_path / "p")
    reader = PartitionReader(part)
    found = []
    for k in reader.client_ids:
        shard = reader.load(k)
        train = shard.images("train")
        found += [(k, int(i)) for i in np.flatnonzero(shard.ids("train") == N - 1)]
        assert train.take(np.arange(0, len(train), 997)).shape[1:] == (224, 224, 3)
    [(k, i)] = found  # row N-1 (a train row) is one client's, once
    assert (reader.load(k).images("train").take([i]) == 7).all()


def test_a_client_holds_row_numbers_not_pixels(part4):
    """A validation carve and subsample select rows; the client's images stay the
    dataset's memory-mapped column, read per batch."""
    cfg = load_config(None, [f"data.partition_dir={part4}", "data.val_fraction=0.2",
                             "data.max_train_per_client=40", "data.max_test_per_client=20"])
    reader = PartitionReader(part4)
    data = load_client(reader, 1, cfg)
    column = reader.dataset.image_column
    assert all(rows.column is column for rows in data.images.values())
    assert {s: len(r) for s, r in data.images.items()} == {"train": 40, "val": 20, "test": 20}
    shard = reader.load(1)
    keep = data.images["train"].rows
    assert set(keep) <= set(shard.ids("train"))  # digits4's ids are its row numbers
    batch = data.images["train"].take(torch.arange(5))
    assert np.array_equal(batch, reader.dataset.images[keep[:5]])


def test_the_client_cache_is_bounded_in_bytes(part4):
    from rayfed_bpt.engine.host import ClientHost, client_bytes

    cap = 0.1  # MiB: one client with its cached features (~70 KB), not two
    cfg = load_config(None, [f"data.partition_dir={part4}", "algorithm.name=fedavg_linear",
                             "data.max_train_per_client=200", "runtime.client_cache=100",
                             f"runtime.client_cache_mb={cap}"])
    host = ClientHost(cfg, str(part4), 1)
    for k in [0, 1, 2, 3, 3]:
        data = host.client(k)
        opened = host.opened()
        assert opened[-1] is data  # the client in use always stays
        assert len(opened) == 1 or sum(map(client_bytes, opened)) <= cap * 2**20
        host.alg.features(data, "train")  # 200 cached features of 64 floats
    assert [d.client_id for d in host.opened()] == [3]
    assert client_bytes(host.opened()[0]) > 200 * 64 * 4  # the features are counted


@pytest.fixture(scope="module")
def jpeg_dataset(tmp_path_factory):
    """60 photo-like sources (sides 256..400) imported at 224 as JPEG."""
    root = tmp_path_factory.mktemp("src") / "shots"
    rng = np.random.default_rng(1)
    for i in range(60):
        f = root / ["day", "night"][i % 2] / ["cat", "dog"][i // 2 % 2] / f"{i}.jpg"
        f.parent.mkdir(parents=True, exist_ok=True)
        w, h = rng.integers(256, 400, 2)
        base = np.full((int(h), int(w), 3), [(i // 2 % 2) * 180 + 30, 90, 60 + 100 * (i % 2)])
        Image.fromarray((base + rng.normal(0, 20, base.shape)).clip(0, 255).astype(np.uint8)
                        ).save(f, quality=90)
    return prepare("image_folder", path=root, out=root.parent / "shots.arrow", size=224,
                   workers=2, show=False)


def test_one_round_of_the_default_algorithm_trains_from_jpeg_storage(jpeg_dataset, tmp_path):
    from rayfed_bpt.data.pixels import decode_jpeg
    from rayfed_bpt.engine import run_reference

    ds = load_dataset(jpeg_dataset)
    assert ds.info.pixels == "jpeg" and ds.table.schema.field("image").type == pa.binary()
    part = write_partition(ds, PartitionConfig("domain_mix", num_clients=2, seed=0,
                                               min_samples=5), tmp_path / "p")
    cfg = load_config(None, [f"data.partition_dir={part}", "train.rounds=1",
                             "train.fraction=1.0", "data.max_train_per_client=16",
                             "train.batch_size=4",
                             "data.max_test_per_client=8", "algorithm.options.prompt_len=2"])
    assert cfg.algorithm.name == "pfedbayespt"
    reader = PartitionReader(part)
    data = load_client(reader, 0, cfg)
    rows = data.images["train"].rows[:3]
    want = np.stack([decode_jpeg(b) for b in ds.image_column.encoded(rows)])
    assert np.array_equal(data.images["train"].take([0, 1, 2]), want)  # decoded per batch
    from rayfed_bpt.algorithms.client import ClientData
    from rayfed_bpt.engine.loop import is_timing

    calls = []
    real = ClientData.prefetch
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ClientData, "prefetch", lambda self, *a: calls.append(a) or real(self, *a))
        history = run_reference(cfg, log=None)
    assert calls  # JPEG: the next batch was decoded while the current one trained
    assert len(history) == 1 and 0 <= history[-1]["acc_mean"] <= 1
    assert np.isfinite(history[-1]["train_loss"])
    with pytest.MonkeyPatch.context() as mp:  # reading ahead changes no number
        mp.setattr(ClientData, "reads_ahead", lambda self, backbone: False)
        again = run_reference(cfg, log=None)
    same = [{k: v for k, v in m.items() if not is_timing(k)} for m in (history[0], again[0])]
    assert same[0] == same[1]
