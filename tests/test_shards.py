"""Partitions on disk: the indices layout (the default) and the copies (files, packed),
round trip, reading in place, manifest checks, stamps and corruption."""

import json

import numpy as np
import pyarrow as pa
import pytest

from rayfed_bpt.data import PartitionConfig, PartitionReader, load_dataset, write_partition
from rayfed_bpt.data.arrow_io import write_table
from rayfed_bpt.data.schema import SCHEMA_VERSION, DatasetInfo, make_table
from rayfed_bpt.errors import DataError

RECIPE = PartitionConfig("domain_mix", num_clients=6, seed=1)


@pytest.fixture(scope="module")
def index_dir(digits4, tmp_path_factory):
    """The default layout: each client's row numbers into the one dataset."""
    out = tmp_path_factory.mktemp("parts") / "dm"
    write_partition(digits4, RECIPE, out)
    return out


@pytest.fixture(scope="module")
def part_dir(digits4, tmp_path_factory):
    """The same partition with a copy of each client's rows in its own file."""
    out = tmp_path_factory.mktemp("parts") / "dm"
    write_partition(digits4, RECIPE, out, layout="files")
    return out


@pytest.mark.parametrize("layout_dir", ["index_dir", "part_dir"])
def test_round_trip_matches_dataset_rows(digits4, layout_dir, request):
    reader = PartitionReader(request.getfixturevalue(layout_dir))
    assert reader.num_clients == 6
    seen = []
    for k in reader.client_ids:
        shard = reader.load(k)
        e = reader.entry(k)
        for split in ("train", "test"):
            ids = shard.ids(split)
            seen.append(ids)
            assert np.array_equal(shard.images(split).read(), digits4.images[ids])
            assert np.array_equal(shard.labels(split), digits4.labels[ids])
            assert (digits4.splits[ids] == split).all()
            assert (
                np.bincount(shard.labels(split), minlength=10).tolist() == e["label_counts"][split]
            )
            assert (
                np.bincount(shard.domains(split), minlength=4).tolist() == e["domain_counts"][split]
            )
    all_ids = np.concatenate(seen)
    assert len(np.unique(all_ids)) == len(all_ids) == len(digits4)  # domain_mix uses all


def _views_of_the_map(images):
    views = images.column._views
    return all(not v.flags.owndata and not v.flags.writeable for v in views)


@pytest.mark.parametrize("layout_dir", ["index_dir", "part_dir"])
def test_shards_are_memory_mapped_not_copied(layout_dir, request):
    reader = PartitionReader(request.getfixturevalue(layout_dir), verify=False)
    reader.load(0)  # the dataset (indices) is opened once per reader
    before = pa.total_allocated_bytes()
    images = reader.load(1).images("train")
    assert pa.total_allocated_bytes() == before  # nothing allocated by Arrow's pool
    assert _views_of_the_map(images)  # views of the map; pixels are read by take()
    assert images.take([0, 2]).shape == (2, 32, 32, 3)


def test_an_index_partition_costs_kilobytes_and_reads_what_the_copies_hold(
        digits4, index_dir, part_dir):
    sizes = {p.name: p.stat().st_size for p in index_dir.iterdir()}
    assert sorted(sizes) == ["manifest.json", "rows.arrow"]
    assert sizes["rows.arrow"] < 0.01 * digits4.path.stat().st_size  # 8 bytes an example
    copies = sum(p.stat().st_size for p in part_dir.iterdir())
    assert sum(sizes.values()) < 0.01 * copies
    a, b = PartitionReader(index_dir), PartitionReader(part_dir)
    assert a.layout == "indices" and b.layout == "files"
    for k in a.client_ids:
        x, y = a.load(k), b.load(k)
        assert (x.num_train, x.num_test) == (y.num_train, y.num_test)
        for split in ("train", "test"):
            assert np.array_equal(x.images(split).read(), y.images(split).read())
            for col in ("labels", "domains", "ids"):
                assert np.array_equal(getattr(x, col)(split), getattr(y, col)(split))


def test_manifest_records_config_dataset_and_version(digits4, index_dir):
    m = json.loads((index_dir / "manifest.json").read_text())
    assert m["schema_version"] == SCHEMA_VERSION and m["layout"] == "indices"
    assert m["partition"]["partitioner"] == "domain_mix" and m["partition"]["domain_alpha"] == 0.5
    assert m["dataset"]["sha256"] == digits4.sha256
    assert m["dataset"]["size"] == digits4.path.stat().st_size and "edges" in m["dataset"]
    assert (index_dir / m["dataset"]["relpath"]).resolve() == digits4.path.resolve()
    assert "k" not in m["partition"]  # only the options that matter


def test_same_config_same_bytes(digits4, index_dir, tmp_path):
    again = write_partition(digits4, RECIPE, tmp_path / "again")
    a = json.loads((index_dir / "manifest.json").read_text())["clients"]
    b = json.loads((again / "manifest.json").read_text())["clients"]
    assert [c["sha256"] for c in a] == [c["sha256"] for c in b]
    assert (index_dir / "rows.arrow").read_bytes() == (again / "rows.arrow").read_bytes()


def test_changed_index_rows_name_the_client(index_dir, tmp_path):
    d = _copy(index_dir, tmp_path / "p")
    path = d / "rows.arrow"
    start = json.loads((d / "manifest.json").read_text())["clients"][3]["start"]
    data = bytearray(path.read_bytes())
    rows = pa.ipc.open_file(pa.py_buffer(bytes(data))).get_batch(0).column(0).to_numpy()
    at = bytes(data).find(rows.tobytes()) + 8 * start  # client 3's first row number
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="rows.arrow changed since the partition"):
        PartitionReader(d).verify_stamps()  # a small file's edges are all of it
    with pytest.raises(DataError, match="client 3's rows .* does not match its manifest hash"):
        PartitionReader(d).load(3)
    PartitionReader(d).load(2)  # the others still load


def test_a_run_start_checks_stamps_and_data_verify_every_byte(digits4_path, tmp_path):
    """A changed dataset is refused by its stamp (size, first and last MiB; a changed
    modification time asks for the full hash); `verify_all` hashes everything."""
    import os
    import shutil

    from rayfed_bpt.data import load_dataset

    src = tmp_path / "datasets" / "d.arrow"
    src.parent.mkdir()
    shutil.copy(digits4_path, src)
    shutil.copy(digits4_path.with_suffix(".json"), src.with_suffix(".json"))
    part = write_partition(load_dataset(src), RECIPE, tmp_path / "partitions" / "p")
    PartitionReader(part).verify_stamps()
    st = src.stat()
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a pixel in the middle, far from both edges
    src.write_bytes(bytes(data))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # (a coarse clock, too)
    with pytest.raises(DataError, match="changed since the partition's manifest recorded it"):
        PartitionReader(part).verify_stamps()  # the time moved: hashed in full, refused
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))  # a byte changed behind our back
    PartitionReader(part).verify_stamps()  # the stamp cannot see it (documented) ...
    with pytest.raises(DataError, match="does not match its manifest hash"):
        PartitionReader(part).verify_all()  # ... `rayfed-bpt data verify` does
    src.write_bytes(bytes(data[:-10]))
    with pytest.raises(DataError, match="changed since the partition's manifest recorded it"):
        PartitionReader(part).verify_stamps()


def test_the_dataset_is_found_beside_a_moved_data_root(digits4_path, tmp_path):
    import shutil

    from rayfed_bpt.data import load_dataset

    root = tmp_path / "root"
    (root / "datasets").mkdir(parents=True)
    for suffix in (".arrow", ".json"):
        shutil.copy(digits4_path.with_suffix(suffix), root / "datasets" / f"d{suffix}")
    write_partition(load_dataset(root / "datasets" / "d.arrow"), RECIPE,
                    root / "partitions" / "p")
    moved = shutil.move(root, tmp_path / "mounted_elsewhere")
    reader = PartitionReader(moved / "partitions" / "p")
    assert reader.dataset_path.resolve() == (moved / "datasets" / "d.arrow").resolve()
    assert reader.load(0).images("train").take([0]).shape == (1, 32, 32, 3)
    shutil.rmtree(moved / "datasets")
    with pytest.raises(DataError, match="that partition .* indexes is missing"):
        PartitionReader(moved / "partitions" / "p").load(0)


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_hash_mismatch_names_the_file(part_dir, tmp_path):
    d = _copy(part_dir, tmp_path / "p")
    shard = d / "client_00002.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"client_00002\.arrow does not match its manifest hash"):
        PartitionReader(d).load(2)
    PartitionReader(d).load(1)  # the others still load


def test_truncated_shard_is_a_clear_error(part_dir, tmp_path):
    d = _copy(part_dir, tmp_path / "p")
    shard = d / "client_00001.arrow"
    shard.write_bytes(shard.read_bytes()[:5000])
    with pytest.raises(DataError, match="not a readable Arrow IPC file.*truncated or corrupt"):
        PartitionReader(d, verify=False).load(1)


def test_missing_shard_and_missing_manifest(part_dir, tmp_path):
    d = _copy(part_dir, tmp_path / "p")
    (d / "client_00003.arrow").unlink()
    with pytest.raises(DataError, match="client_00003.arrow listed in the manifest is missing"):
        PartitionReader(d).load(3)
    with pytest.raises(DataError, match="no manifest.json"):
        PartitionReader(tmp_path)


def test_schema_version_from_the_future(part_dir, tmp_path):
    d = _copy(part_dir, tmp_path / "p")
    m = json.loads((d / "manifest.json").read_text())
    m["schema_version"] = SCHEMA_VERSION + 1
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match=f"schema version {SCHEMA_VERSION + 1}.*Upgrade"):
        PartitionReader(d)


def test_future_version_inside_an_arrow_file(tmp_path):
    info = DatasetInfo("x", ["a"], ["d"], (2, 2, 3), schema_version=SCHEMA_VERSION + 1)
    t = make_table(info, np.zeros((1, 2, 2, 3), np.uint8), [0], [0], np.array(["train"]))
    write_table(t, tmp_path / "x.arrow")
    with pytest.raises(DataError, match="schema version"):
        load_dataset(tmp_path / "x.arrow")


def test_foreign_arrow_file_is_refused(tmp_path):
    write_table(pa.table({"a": [1, 2]}), tmp_path / "f.arrow")
    with pytest.raises(DataError, match="no rayfed_bpt metadata"):
        load_dataset(tmp_path / "f.arrow")


def test_existing_output_needs_overwrite_and_failed_write_leaves_nothing(digits4, tmp_path):
    out = tmp_path / "p"
    write_partition(digits4, PartitionConfig("iid", num_clients=3), out)
    mtime = (out / "manifest.json").stat().st_mtime_ns
    write_partition(digits4, PartitionConfig("iid", num_clients=3), out)  # same recipe: kept
    assert (out / "manifest.json").stat().st_mtime_ns == mtime
    with pytest.raises(DataError, match="already exists with another dataset, recipe or layout"):
        write_partition(digits4, PartitionConfig("iid", num_clients=4), out)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(DataError, match="could not give every"):
        write_partition(
            digits4,
            PartitionConfig("dirichlet", num_clients=200, label_alpha=0.01, min_samples=60,
                            max_draws=2),
            out,
            overwrite=True,
        )
    assert sorted(p.name for p in out.iterdir()) == before  # the old partition is intact
    assert [p.name for p in tmp_path.iterdir()] == ["p"]  # no temporary leftovers



def _write_same(path, out, barrier, results):
    ds = load_dataset(path)
    barrier.wait()  # all check "exists?" together: the race a parallel suite can hit
    try:
        write_partition(ds, PartitionConfig("iid", num_clients=3, seed=0), out)
        results.put("ok")
    except Exception as e:  # noqa: BLE001 - reported to the test
        results.put(repr(e))


def test_parallel_writers_of_one_partition_all_succeed(digits4_path, tmp_path):
    """Parallel runs on one node may each make the same partition: none may fail."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    out, barrier, results = tmp_path / "same", ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_write_same, args=(digits4_path, out, barrier, results))
             for _ in range(4)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert got == ["ok"] * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same"]  # no temp folders left


@pytest.fixture(scope="module")
def packed_dir(digits4, tmp_path_factory):
    """The same partition as ``part_dir``, packed 4 clients a file (2 packs)."""
    from rayfed_bpt.data import shards

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shards, "PACK", 4)
        out = tmp_path_factory.mktemp("packed") / "dm"
        write_partition(digits4, RECIPE, out, layout="packed")
    return out


def test_a_packed_partition_holds_the_same_rows_in_few_files(part_dir, packed_dir):
    files, packed = PartitionReader(part_dir), PartitionReader(packed_dir)
    assert packed.layout == "packed" and files.layout == "files"
    assert sorted(p.name for p in packed_dir.iterdir()) == [
        "manifest.json", "pack_00000.arrow", "pack_00001.arrow"]
    packed.verify_all()
    for k in files.client_ids:
        a, b = files.load(k), packed.load(k)
        assert (a.num_train, a.num_test) == (b.num_train, b.num_test)
        for split in ("train", "test"):
            assert np.array_equal(a.images(split).read(), b.images(split).read())
            for col in ("labels", "domains", "ids"):
                assert np.array_equal(getattr(a, col)(split), getattr(b, col)(split))
    before = pa.total_allocated_bytes()
    images = PartitionReader(packed_dir, verify=False).load(5).images("train")
    assert pa.total_allocated_bytes() == before  # zero-copy: a view of the mapped pack
    assert _views_of_the_map(images)


def test_a_changed_pack_is_named_and_so_is_the_client_whose_rows_changed(packed_dir,
                                                                       tmp_path):
    d = _copy(packed_dir, tmp_path / "p")
    reader = PartitionReader(d)
    e = reader.entry(5)  # client 5: pack 1, batch 1
    assert (e["file"], e["batch"]) == ("pack_00001.arrow", 1)
    pack = d / e["file"]
    data = bytearray(pack.read_bytes())
    data[len(data) * 3 // 4] ^= 0xFF  # a byte inside the pack's last client's images
    pack.write_bytes(bytes(data))
    with pytest.raises(DataError, match="pack_00001.arrow"):
        PartitionReader(d).verify_all()
    bad = [k for k in (4, 5) if _fails(d, k)]
    assert bad == [5]  # the client whose rows hold the flipped byte, and only it
    with pytest.raises(DataError, match="client 5's shard"):
        PartitionReader(d).load(5)


def _fails(d, k):
    try:
        PartitionReader(d).check_shard(k)
    except DataError:
        return True
    return False


def test_auto_layout_is_indices():
    from rayfed_bpt.data.shards import resolve_layout

    assert resolve_layout("auto") == "indices" and resolve_layout("packed") == "packed"
    with pytest.raises(DataError, match="allowed: auto, indices, files, packed"):
        resolve_layout("zip")


def test_another_layout_over_an_existing_partition_needs_overwrite(digits4, index_dir,
                                                                   tmp_path):
    d = _copy(index_dir, tmp_path / "p")
    assert write_partition(digits4, RECIPE, d) == d  # the same: kept
    with pytest.raises(DataError, match="already exists with another dataset, recipe or "
                                        "layout"):
        write_partition(digits4, RECIPE, d, layout="packed")
    write_partition(digits4, RECIPE, d, layout="packed", overwrite=True)
    assert PartitionReader(d).layout == "packed"


def test_a_default_partition_an_older_version_made_is_made_again(digits4_path, tmp_path,
                                                                 monkeypatch):
    """What `rayfed-bpt run` finds in its cache from before schema 2 (one file a client,
    manifest version 1) is replaced, not refused; a partition folder someone named is
    refused with the reason."""
    from rayfed_bpt.config import DataConfig
    from rayfed_bpt.data import load_dataset
    from rayfed_bpt.data.recipe import partition_folder, resolve_partition

    monkeypatch.setenv("RAYFED_BPT_DATA", str(tmp_path))
    data = DataConfig(dataset=str(digits4_path), num_clients=3)
    old = partition_folder(digits4_path, data.recipe(0))
    write_partition(load_dataset(digits4_path), data.recipe(0), old, layout="files")
    m = json.loads((old / "manifest.json").read_text())
    m["schema_version"] = 1
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="already exists with an older rayfed_bpt's partition"):
        write_partition(load_dataset(digits4_path), data.recipe(0), old)
    assert resolve_partition(data, 0) == old
    assert PartitionReader(old).layout == "indices" and not list(old.glob("client_*"))


def test_a_copied_dataset_is_hashed_once_then_known_by_its_stamp(digits4_path, tmp_path,
                                                                 monkeypatch):
    import os
    import shutil

    from rayfed_bpt.data import arrow_io, load_dataset

    src = tmp_path / "d.arrow"
    shutil.copy(digits4_path, src)  # no sidecar: the partition hashes the file itself
    part = write_partition(load_dataset(src), RECIPE, tmp_path / "p")
    assert json.loads((part / "manifest.json").read_text())["dataset"]["sha256"] == \
        arrow_io.sha256_file(src)
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # as a copy or restore does
    hashed = []
    monkeypatch.setattr(arrow_io, "sha256_file", lambda p: hashed.append(p) or
                        arrow_io.hashlib.sha256(open(p, "rb").read()).hexdigest())
    PartitionReader(part).verify_stamps()
    assert hashed == [src]  # hashed in full once: only its time had changed ...
    PartitionReader(part).verify_stamps()
    assert hashed == [src]  # ... and its new time recorded: the next start reads 2 MiB
