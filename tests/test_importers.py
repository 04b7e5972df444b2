"""Importers on real files written by the tests: image folders (streamed, in parallel,
bad files skipped and reported, resumed after a kill), CIFAR binary, Parquet, HF."""

import io
import json
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rayfed_bpt.data import PartitionConfig, PartitionReader, load_dataset, prepare
from rayfed_bpt.data.importers import import_cifar
from rayfed_bpt.data.shards import write_partition
from rayfed_bpt.errors import ConfigError, DataError


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
    out = prepare("image_folder", path=image_tree, out=tmp_path / "o.arrow", size=16, show=False)
    ds = load_dataset(out)
    assert ds.info.domain_names == ["amazon", "webcam"] and ds.info.class_names == ["cat", "dog"]
    assert ds.info.pixels == "jpeg" and ds.images.shape == (20, 16, 16, 3)
    red = ds.images[ds.labels == 0].reshape(-1, 3).mean(0)
    assert red[0] > 150 and red[1] < 60  # cat images are the red ones, after JPEG too
    for d in range(2):
        assert set(ds.splits[ds.domains == d]) == {"train", "test"}
    assert ds.sidecar["skipped"] == []


def _photo(rng, w, h):
    """A photo-like JPEG source larger than 224: smooth colour waves and noise."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = 128 + 60 * np.sin(xx[..., None] * rng.uniform(0.005, 0.05, 3)
                            + yy[..., None] * rng.uniform(0.005, 0.05, 3))
    return Image.fromarray((img + rng.normal(0, 8, img.shape)).clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photo_tree(tmp_path_factory):
    """300 photo-like JPEGs (2 domains x 3 classes, sides 240..480), one corrupt file and
    one stray text file."""
    root = tmp_path_factory.mktemp("photos") / "dn"
    rng = np.random.default_rng(0)
    for i in range(300):
        f = root / ["clipart", "real"][i % 2] / ["bird", "tiger", "zebra"][i // 2 % 3] / f"{i}.jpg"
        f.parent.mkdir(parents=True, exist_ok=True)
        _photo(rng, int(rng.integers(240, 480)), int(rng.integers(240, 480))).save(f, quality=85)
    (root / "real" / "tiger" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "clipart" / "bird" / "notes.txt").write_text("not an image")
    return root


def test_a_folder_of_photos_imports_at_224_with_bad_files_skipped_and_listed(photo_tree,
                                                                             tmp_path):
    out = prepare("image_folder", path=photo_tree, out=tmp_path / "dn.arrow", size=224,
                  workers=2, show=False)
    ds = load_dataset(out)
    assert len(ds) == 300 and ds.info.image_shape == (224, 224, 3)
    skipped = {s["file"]: s["reason"] for s in ds.sidecar["skipped"]}
    assert sorted(skipped) == ["clipart/bird/notes.txt", "real/tiger/broken.jpg"]
    assert "not an image file" in skipped["clipart/bird/notes.txt"]
    assert skipped["real/tiger/broken.jpg"]  # PIL's reason (here: a truncated file)
    source = sum(f.stat().st_size for f in photo_tree.rglob("*.jpg"))
    assert out.stat().st_size < 1.2 * source  # stored as JPEG at 224, not raw (150 KB each)
    raw = prepare("image_folder", path=photo_tree, out=tmp_path / "raw.arrow", size=224,
                  pixels="raw", show=False)
    rds = load_dataset(raw)
    assert rds.info.pixels == "raw" and np.array_equal(rds.labels, ds.labels)
    diff = np.abs(rds.images.astype(int) - ds.images.astype(int))
    assert diff.mean() < 3  # the same pixels, but for JPEG's rounding
    with pytest.raises(DataError, match=r"--strict: 1 file\(s\) are no readable images: "
                                        r"clipart/bird/notes\.txt"):  # before any decoding
        prepare("image_folder", path=photo_tree, out=tmp_path / "s.arrow", size=224,
                strict=True, show=False)
    assert not (tmp_path / "s.arrow").exists()


def test_every_image_mode_becomes_rgb_and_transparency_white(tmp_path):
    root = tmp_path / "modes"
    for cls in ("a", "b"):
        (root / "d" / cls).mkdir(parents=True)
    Image.new("L", (40, 30), 100).save(root / "d" / "a" / "gray.png")
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(root / "d" / "a" / "cmyk.jpg")
    Image.new("P", (40, 30), 3).save(root / "d" / "a" / "palette.png")
    Image.new("RGBA", (40, 30), (0, 0, 0, 0)).save(root / "d" / "b" / "clear.png")
    Image.new("LA", (40, 30), (0, 0)).save(root / "d" / "b" / "clear_gray.png")
    Image.fromarray(np.full((30, 40), 40000, np.uint16)).save(root / "d" / "b" / "deep.png")
    ds = load_dataset(prepare("image_folder", path=root, out=tmp_path / "m.arrow", size=8,
                              pixels="raw", test_fraction=0.0, show=False))
    by = dict(zip(np.asarray(ds.ids).tolist(), ds.images))  # listing order: a/*, then b/*
    names = ["cmyk.jpg", "gray.png", "palette.png", "clear.png", "clear_gray.png", "deep.png"]
    got = {n: by[i].reshape(-1, 3).mean(0).round() for i, n in enumerate(names)}
    assert got["gray.png"].tolist() == [100, 100, 100]
    assert got["cmyk.jpg"][0] > 200 and got["cmyk.jpg"][1:].max() < 60  # cyan-free red
    assert got["clear.png"].tolist() == [255, 255, 255]  # transparent: white, not black
    assert got["clear_gray.png"].tolist() == [255, 255, 255]
    assert got["deep.png"].tolist() == [156, 156, 156]  # 16-bit scaled: 40000 / 65535 * 255


def test_short_side_resize_and_centre_crop_or_squash(tmp_path):
    """A 60x20 image whose outer thirds are black: a centre crop keeps the white middle,
    a squash keeps the whole width."""
    root = tmp_path / "wide"
    img = np.zeros((20, 60, 3), np.uint8)
    img[:, 20:40] = 255
    for cls in ("a", "b"):
        (root / "d" / cls).mkdir(parents=True)
        Image.fromarray(img).save(root / "d" / cls / "x.png")
    crop = load_dataset(prepare("image_folder", path=root, out=tmp_path / "c.arrow", size=10,
                                pixels="raw", show=False)).images
    squash = load_dataset(prepare("image_folder", path=root, out=tmp_path / "s.arrow", size=10,
                                  pixels="raw", resize="squash", show=False)).images
    assert crop.shape == squash.shape == (2, 10, 10, 3)
    assert crop[0, :, 2:8].min() > 200  # the middle third fills the crop
    assert squash[0, :, 0].max() < 60 and squash[0, :, 5].min() > 200


def test_domainnet_split_lists_and_class_filter(tmp_path):
    root = tmp_path / "domainnet"
    classes = ["bird", "feather", "headphones", "ice_cream", "teapot", "tiger", "whale",
               "windmill", "wine_glass", "zebra", "apple"]
    lines = {"train": [], "test": []}
    for c, cls in enumerate(classes):
        (root / "real" / cls).mkdir(parents=True)
        for i in range(3):
            _colour_image((20 * c, 0, 0), 8).save(root / "real" / cls / f"{i}.jpg")
            lines["test" if i == 0 else "train"].append(f"real/{cls}/{i}.jpg {c}")
    lines["train"].remove("real/apple/2.jpg 10")  # listed nowhere: skipped, and said so
    for split, rows in lines.items():
        (root / f"real_{split}.txt").write_text("\n".join(rows) + "\n")
    ds = load_dataset(prepare("image_folder", path=root, out=tmp_path / "all.arrow", size=8,
                              show=False))
    assert len(ds) == 32 and ds.sidecar["split_counts"] == {"train": 21, "test": 11}
    first = {cls: ds.splits[(ds.labels == c)][0] for c, cls in enumerate(ds.info.class_names)}
    assert set(first.values()) == {"test"}  # 0.jpg of every class, as the lists say
    assert ds.sidecar["skipped"] == [{"file": "real/apple/2.jpg",
                                      "reason": "in neither real_train.txt nor real_test.txt"}]
    ten = load_dataset(prepare("image_folder", path=root, out=tmp_path / "ten.arrow", size=8,
                               classes=["domainnet10"], show=False))
    assert ten.info.class_names == sorted(classes[:10]) and len(ten) == 30
    with pytest.raises(DataError, match=r"--classes names \['nope'\]"):
        prepare("image_folder", path=root, out=tmp_path / "x.arrow", classes=["bird", "nope"])
    with pytest.raises(DataError, match="holds one class \\(bird\\)"):
        prepare("image_folder", path=root, out=tmp_path / "x.arrow", classes=["bird"])


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare("image_folder", path=tmp_path / "nowhere")
    (tmp_path / "empty" / "dom").mkdir(parents=True)
    with pytest.raises(DataError, match="has no class folders"):
        prepare("image_folder", path=tmp_path / "empty")
    for cls in ("a", "b"):
        bad = tmp_path / "bad" / "dom" / cls
        bad.mkdir(parents=True)
        (bad / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"none of the 2 images could be read .*x\.png"):
        prepare("image_folder", path=tmp_path / "bad", out=tmp_path / "bad.arrow", show=False)
    with pytest.raises(DataError, match=r"--strict: 2 file\(s\) are no readable images: "
                                        r"dom/a/x\.png: cannot identify"):
        prepare("image_folder", path=tmp_path / "bad", out=tmp_path / "bad.arrow", strict=True,
                show=False)
    assert not (tmp_path / "bad.arrow").exists()
    with pytest.raises(ConfigError, match="--pixels png"):
        prepare("image_folder", path=tmp_path / "bad", pixels="png")


KILLER = """
    import os, signal, sys
    from rayfed_bpt.data import prepare, stream
    stream.CHUNK_ROWS = 16
    stream.after_part.append(lambda i: i == 3 and os.kill(os.getpid(), signal.SIGKILL))
    prepare("image_folder", path=sys.argv[1], out=sys.argv[2], size=64, workers=2, show=False)
"""


def test_a_killed_import_resumes_into_the_same_file(photo_tree, tmp_path, monkeypatch):
    """SIGKILL right after part 3 is written (a hook, not a timer); the same command again
    keeps the finished parts and writes a file identical to an import never stopped."""
    from rayfed_bpt.data import stream

    out = tmp_path / "killed.arrow"
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLER), str(photo_tree),
                        str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    parts = stream.parts_dir(out)
    assert not out.exists() and parts.exists()
    kept = {int(p.stem[5:]) for p in parts.glob("part_*.json")}
    assert 3 in kept and len(kept) < 19
    monkeypatch.setattr(stream, "CHUNK_ROWS", 16)
    written = []
    monkeypatch.setattr(stream, "after_part", [written.append])
    prepare("image_folder", path=photo_tree, out=out, size=64, workers=2, show=False)
    assert sorted(written) == sorted(set(range(19)) - kept)  # only the missing parts
    assert not parts.exists()
    clean = prepare("image_folder", path=photo_tree, out=tmp_path / "clean.arrow", size=64,
                    workers=2, show=False)
    assert out.read_bytes() == clean.read_bytes()
    assert load_dataset(out).sidecar["skipped"] == load_dataset(clean).sidecar["skipped"]


def test_progress_is_a_line_per_twentieth_without_a_terminal(photo_tree, tmp_path, capfd):
    prepare("image_folder", path=photo_tree, out=tmp_path / "p.arrow", size=32, show=False)
    lines = [ln for ln in capfd.readouterr().out.splitlines() if ln.startswith("import:")]
    assert 2 <= len(lines) <= 21
    assert "/s  ETA" in lines[-1] and "301/301 images" in lines[-1] and "(1 skipped)" in lines[-1]


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
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet", row_group_size=5)
    ds = load_dataset(prepare("parquet", path=tmp_path / "d.parquet", out=tmp_path / "d.arrow",
                              size=8, pixels="raw", show=False))
    assert ds.info.domain_names == ["a", "b"] and len(ds) == 12
    assert ds.labels.tolist() == [i % 3 for i in range(12)]
    reds = ds.images[..., 0].reshape(12, -1).mean(1)  # row groups of 5, chunks of 128
    assert np.allclose(reds, [i * 20 for i in range(12)], atol=1)  # every row in its place
    pq.write_table(pa.table({"img": [b"x"]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"lacks the column\(s\) \['image', 'label'\]"):
        prepare("parquet", path=tmp_path / "bad.parquet")


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
    ds = load_dataset(prepare("hf", path=d, out=tmp_path / "hf.arrow", size=8, show=False))
    assert ds.info.class_names == ["blue", "green"]
    assert ds.splits.tolist()[-2:] == ["test", "test"]


def test_natural_groups_from_a_column_give_each_writer_to_one_client(tmp_path):
    """FEMNIST-style: a writer column; the natural partitioner gives each writer, train
    and test rows alike, to exactly one client."""
    rng = np.random.default_rng(0)
    writers = np.repeat([f"w{i:02d}" for i in range(12)], rng.integers(12, 30, 12))
    rows = [{"image": _png((int(rng.integers(0, 255)), 0, 0)), "label": int(i % 4),
             "writer": w} for i, w in enumerate(writers)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "femnist.parquet")
    ds = load_dataset(prepare("parquet", path=tmp_path / "femnist.parquet",
                              out=tmp_path / "f.arrow", size=8, group_column="writer",
                              show=False))
    assert ds.info.groups == 12 and len(np.unique(ds.groups)) == 12
    for g in range(12):  # split within each group: every writer has test rows
        assert set(ds.splits[ds.groups == g]) == {"train", "test"}
    part = write_partition(ds, PartitionConfig("natural", num_clients=5, min_samples=1),
                           tmp_path / "nat")
    reader = PartitionReader(part)
    holder = {}
    for k in reader.client_ids:
        shard = reader.load(k)
        for split in ("train", "test"):
            for g in set(ds.groups[shard.ids(split)].tolist()):
                assert holder.setdefault(g, k) == k  # one client per writer
    assert sorted(holder) == list(range(12)) and len(set(holder.values())) == 5
    sizes = [reader.entry(k)["num_train"] for k in reader.client_ids]
    assert max(sizes) - min(sizes) <= 30  # largest groups first, to the least-held client
    with pytest.raises(DataError, match="has 12 groups with training rows for 13 clients"):
        write_partition(ds, PartitionConfig("natural", num_clients=13, min_samples=1),
                        tmp_path / "too_many")
    cifar_like = load_dataset(prepare("parquet", path=tmp_path / "femnist.parquet",
                                      out=tmp_path / "nogroups.arrow", size=8, show=False))
    with pytest.raises(DataError, match="has no group column.*--group-column"):
        write_partition(cifar_like, PartitionConfig("natural", num_clients=2), tmp_path / "ng")



@pytest.mark.slow  # 16 s: a local Ray
def test_ray_tasks_import_the_same_bytes_as_local_processes(photo_tree, tmp_path, local_ray):
    """``data prepare --ray``: the chunks as Ray tasks (on every node of a cluster; here a
    local Ray) write the very file a local process pool writes."""
    from rayfed_bpt.runtime.import_tasks import RayExecutor

    executor = RayExecutor()
    assert executor.workers == 2
    by_ray = prepare("image_folder", path=photo_tree, out=tmp_path / "ray.arrow", size=64,
                     executor=executor, workers=executor.workers, show=False)
    local = prepare("image_folder", path=photo_tree, out=tmp_path / "local.arrow", size=64,
                    workers=2, show=False)
    assert by_ray.read_bytes() == local.read_bytes()


def test_a_chunk_with_no_readable_image_in_raw_storage_is_skipped(tmp_path, monkeypatch):
    """Raw pixels: a part whose every file is bad is an empty part, not a crash."""
    from rayfed_bpt.data import stream

    monkeypatch.setattr(stream, "CHUNK_ROWS", 2)
    root = tmp_path / "f"
    for cls in ("a", "b"):
        (root / "d" / cls).mkdir(parents=True)
    (root / "d" / "a" / "0.png").write_bytes(b"junk")  # chunk 0: both files bad
    (root / "d" / "a" / "1.png").write_bytes(b"junk")
    for i in (2, 3):
        Image.new("RGB", (9, 9), (0, 90, 0)).save(root / "d" / "b" / f"{i}.png")
    ds = load_dataset(prepare("image_folder", path=root, out=tmp_path / "r.arrow", size=4,
                              pixels="raw", workers=1, show=False))
    assert len(ds) == 2 and ds.ids.tolist() == [2, 3] and len(ds.sidecar["skipped"]) == 2


def test_a_plugin_plan_whose_chunks_do_not_add_up_is_refused(tmp_path, monkeypatch):
    from rayfed_bpt.data import DatasetInfo, ImportPlan, stream

    monkeypatch.setattr(stream, "CHUNK_ROWS", 2)
    info = DatasetInfo("p", ["a", "b"], ["d"], (4, 4, 3), pixels="raw")
    png = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(png)
    plan = ImportPlan(info, np.array([0, 1, 0]), np.zeros(3, int), np.array(["train"] * 3),
                      lambda n: iter([[str(png)] * 2]), str, "fp")  # 2 of 3 images
    with pytest.raises(DataError, match="yielded 1 chunks for 3 images; 2 were due"):
        stream.write_import(plan, tmp_path / "p.arrow", workers=1, show=False)
    plan.chunks = lambda n: iter([[str(png)]])
    with pytest.raises(DataError, match="chunk 0 holds 1 images"):
        stream.write_import(plan, tmp_path / "p.arrow", workers=1, show=False)
