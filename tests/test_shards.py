"""Shards on disk: round trip, memory mapping, manifest checks and corruption."""

import json

import numpy as np
import pyarrow as pa
import pytest

from rayfed_bpt.data import PartitionConfig, PartitionReader, load_dataset, write_partition
from rayfed_bpt.data.arrow_io import write_table
from rayfed_bpt.data.schema import SCHEMA_VERSION, DatasetInfo, make_table
from rayfed_bpt.errors import DataError


@pytest.fixture(scope="module")
def part_dir(digits4, tmp_path_factory):
    out = tmp_path_factory.mktemp("parts") / "dm"
    write_partition(digits4, PartitionConfig("domain_mix", num_clients=6, seed=1), out)
    return out


def test_round_trip_matches_dataset_rows(digits4, part_dir):
    reader = PartitionReader(part_dir)
    assert reader.num_clients == 6
    seen = []
    for k in reader.client_ids:
        shard = reader.load(k)
        e = reader.entry(k)
        for split in ("train", "test"):
            ids = shard.ids(split)
            seen.append(ids)
            assert np.array_equal(shard.images(split), digits4.images[ids])
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


def test_shards_are_memory_mapped_not_copied(part_dir):
    reader = PartitionReader(part_dir, verify=False)
    before = pa.total_allocated_bytes()
    shard = reader.load(0)
    images = shard.images("train")
    assert pa.total_allocated_bytes() == before  # nothing allocated by Arrow's pool
    assert not images.flags.owndata and not images.flags.writeable  # a view of the map


def test_manifest_records_config_dataset_and_version(digits4, part_dir):
    m = json.loads((part_dir / "manifest.json").read_text())
    assert m["schema_version"] == SCHEMA_VERSION
    assert m["partition"]["partitioner"] == "domain_mix" and m["partition"]["domain_alpha"] == 0.5
    assert m["dataset"]["sha256"] == digits4.sha256
    assert "k" not in m["partition"]  # only the options that matter


def test_same_config_same_bytes(digits4, part_dir, tmp_path):
    again = write_partition(
        digits4, PartitionConfig("domain_mix", num_clients=6, seed=1), tmp_path / "again"
    )
    a = json.loads((part_dir / "manifest.json").read_text())["clients"]
    b = json.loads((again / "manifest.json").read_text())["clients"]
    assert [c["sha256"] for c in a] == [c["sha256"] for c in b]


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
    with pytest.raises(DataError, match="already exists with another dataset or config"):
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
        write_partition(digits4, PartitionConfig("domain_mix", num_clients=6, seed=1), out,
                        layout="packed")
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
            for col in ("images", "labels", "domains", "ids"):
                assert np.array_equal(getattr(a, col)(split), getattr(b, col)(split))
    before = pa.total_allocated_bytes()
    images = PartitionReader(packed_dir, verify=False).load(5).images("train")
    assert pa.total_allocated_bytes() == before  # zero-copy: a view of the mapped pack
    assert not images.flags.owndata and not images.flags.writeable


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


def test_auto_layout_packs_large_populations_only():
    from rayfed_bpt.data.shards import FILES_UP_TO, resolve_layout

    assert resolve_layout("auto", FILES_UP_TO) == "files"
    assert resolve_layout("auto", FILES_UP_TO + 1) == "packed"
    with pytest.raises(DataError, match="allowed: auto, files, packed"):
        resolve_layout("zip", 3)
