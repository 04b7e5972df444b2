"""Importers on real files written by the tests: image folders, CIFAR binary, Parquet, HF."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rayfed_bpt.data import load_dataset, prepare
from rayfed_bpt.data.importers import import_cifar, import_image_folder, import_table_source
from rayfed_bpt.errors import DataError


def _colour_image(rgb, size=20):
    return Image.fromarray(np.full((size, size + 4, 3), rgb, np.uint8))


@pytest.fixture
def image_tree(tmp_path):
    root = tmp_path / "office"
    colours = {"cat": (200, 10, 10), "dog": (10, 200, 10)}
    for dom, ext in (("amazon", "jpg"), ("webcam", "png")):
        for cls, rgb in colours.items():
            (root / dom / cls).mkdir(parents=True)
            for i in range(5):
                _colour_image(rgb).save(root / dom / cls / f"{i}.{ext}")
    return root


def test_image_folder(image_tree, tmp_path):
    out = prepare("image_folder", path=image_tree, out=tmp_path / "o.arrow", size=16)
    ds = load_dataset(out)
    assert ds.info.domain_names == ["amazon", "webcam"] and ds.info.class_names == ["cat", "dog"]
    assert ds.images.shape == (20, 16, 16, 3)
    red = ds.images[ds.labels == 0].reshape(-1, 3).mean(0)
    assert red[0] > 150 and red[1] < 60  # cat images are the red ones, after JPEG too
    for d in range(2):
        assert set(ds.splits[ds.domains == d]) == {"train", "test"}


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        import_image_folder(tmp_path / "nowhere")
    (tmp_path / "empty" / "dom").mkdir(parents=True)
    with pytest.raises(DataError, match="has no class folders"):
        import_image_folder(tmp_path / "empty")
    bad = tmp_path / "bad" / "dom" / "cls"
    bad.mkdir(parents=True)
    (bad / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*x\.png"):
        import_image_folder(tmp_path / "bad")


def _write_cifar10(root, n=4):
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        chw = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        np.concatenate([labels[:, None], chw.reshape(n, -1)], 1).tofile(root / name)
    (root / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n\n")
    return labels, chw  # of the test batch


def test_cifar10_binary(tmp_path):
    labels, chw = _write_cifar10(tmp_path / "cifar-10-batches-bin")
    table, info = import_cifar(tmp_path / "cifar-10-batches-bin", "cifar10")
    assert table.num_rows == 24 and info.class_names[3] == "c3"
    test = table.filter(pa.compute.equal(table.column("split"), "test"))
    img = test.column("image").chunk(0).to_numpy_ndarray()
    assert np.array_equal(img, chw.transpose(0, 2, 3, 1))  # CHW -> HWC
    assert test.column("label").to_numpy().tolist() == labels.tolist()


def test_cifar100_binary_and_truncated(tmp_path):
    root = tmp_path / "cifar-100-binary"
    root.mkdir()
    rec = np.zeros((3, 2 + 3072), np.uint8)
    rec[:, 0], rec[:, 1] = 7, [5, 50, 99]
    rec.tofile(root / "train.bin")
    rec.tofile(root / "test.bin")
    table, info = import_cifar(root, "cifar100")
    assert table.column("label").to_numpy().tolist() == [5, 50, 99] * 2  # fine labels
    (root / "test.bin").write_bytes(rec.tobytes()[:-10])
    with pytest.raises(DataError, match="truncated or not the binary version"):
        import_cifar(root, "cifar100")
    with pytest.raises(DataError, match="CIFAR file .*missing"):
        import_cifar(tmp_path / "cifar-100-binary", "cifar10")


def _png(rgb):
    buf = io.BytesIO()
    _colour_image(rgb, 8).save(buf, format="PNG")
    return buf.getvalue()


def test_parquet_with_hf_image_struct_and_domains(tmp_path):
    rows = [
        {
            "image": {"bytes": _png((i * 20, 0, 0)), "path": None},
            "label": i % 3,
            "domain": ["a", "b"][i % 2],
        }
        for i in range(12)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    table, info = import_table_source(tmp_path / "d.parquet", size=8)
    assert info.domain_names == ["a", "b"] and table.num_rows == 12
    assert table.column("label").to_numpy().tolist() == [i % 3 for i in range(12)]
    pq.write_table(pa.table({"img": [b"x"]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"lacks the column\(s\) \['image', 'label'\]"):
        import_table_source(tmp_path / "bad.parquet")


def test_hf_save_to_disk_folder(tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    t = pa.table(
        {
            "image": [_png((0, 0, 200)), _png((0, 200, 0))] * 3,
            "label": [0, 1] * 3,
            "split": ["train", "train", "train", "train", "test", "test"],
        }
    )
    with pa.ipc.new_stream(d / "data-00000-of-00001.arrow", t.schema) as w:
        w.write_table(t)
    (d / "dataset_info.json").write_text(
        json.dumps({"features": {"label": {"names": ["blue", "green"]}}})
    )
    table, info = import_table_source(d, size=8)
    assert info.class_names == ["blue", "green"]
    assert table.column("split").to_pylist()[-2:] == ["test", "test"]
