"""Writing a partition: ``manifest.json`` plus who holds which rows.

Three layouts; ``reader.py`` reads them all. ``indices`` (``auto``): ``rows.arrow``,
every client's row numbers into the one dataset (train rows, then test rows), 8
bytes an example: no pixel is copied, and a partition of DomainNet is megabytes.
``files`` (one IPC file per client) and ``packed`` (``PACK`` clients per IPC file,
one record batch each) copy the rows: a partition that travels without its
dataset. The manifest records, per client, where its rows are, a sha256 of them
(of its row numbers; files: of the file; packed: of the batch's IPC message) and
its counts per label and domain; for the whole partition the dataset it was cut
from (path, path relative to the partition, sha256 and stamp), each file's stamp
(size, modification time, first and last MiB: what a run start checks), the
recipe, the seed and the schema version.

The partition is written into a temporary folder beside the target and
renamed into place when complete, so an interrupted write leaves nothing
under the real name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..config import PartitionConfig
from ..errors import DataError
from .arrow_io import file_stamp, match_umask, sha256_file, write_json, write_table
from .dataset import Dataset
from .partition import partition_indices, recipe_record
from .reader import MANIFEST, ROWS, batch_sha256, rows_sha256
from .schema import SCHEMA_VERSION, rows_per_batch

#: clients per pack file in the packed layout
PACK = 1024
LAYOUTS = ("auto", "indices", "files", "packed")


def shard_name(client_id: int) -> str:
    return f"client_{client_id:05d}.arrow"


def pack_name(index: int) -> str:
    return f"pack_{index:05d}.arrow"


def resolve_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise DataError(f"layout={layout!r}; allowed: {', '.join(LAYOUTS)}")
    return "indices" if layout == "auto" else layout


def _counts(tr: np.ndarray, te: np.ndarray, labels: np.ndarray, domains: np.ndarray,
            info) -> dict:
    """A client's manifest entry beside where its rows are: sizes, label and domain counts."""
    def count(values: np.ndarray, idx: np.ndarray, n: int) -> list[int]:
        return np.bincount(values[idx], minlength=n).tolist()

    return {"num_train": int(len(tr)), "num_test": int(len(te)),
            "label_counts": {"train": count(labels, tr, info.num_classes),
                             "test": count(labels, te, info.num_classes)},
            "domain_counts": {"train": count(domains, tr, info.num_domains),
                              "test": count(domains, te, info.num_domains)}}


def write_partition(
    dataset: Dataset, cfg: PartitionConfig, out_dir: str | os.PathLike, overwrite: bool = False,
    layout: str = "auto",
) -> Path:
    """Partition ``dataset`` by ``cfg`` and write shards + manifest to ``out_dir``
    (``layout``: indices, the default, or a copy of the rows: files, packed)."""
    out_dir = Path(out_dir)
    cfg = cfg.recipe(0)  # the bare recipe (a run's DataConfig carries more); unset seed: 0
    layout = resolve_layout(layout)
    sha256 = dataset.sha256 or sha256_file(dataset.path)  # a dataset without its sidecar
    if out_dir.exists() and not overwrite:
        if _matches(out_dir, cfg, layout, sha256=sha256):
            return out_dir  # already written from this dataset with this config
        old = _manifest(out_dir) or {}
        why = ("an older rayfed_bpt's partition" if old.get("schema_version", 0) < SCHEMA_VERSION
               else "another dataset, recipe or layout")
        raise DataError(
            f"{out_dir} already exists with {why}. Pass --overwrite to replace it, or choose "
            "another --out."
        )
    info = dataset.info
    splits = dataset.splits
    part = partition_indices(cfg, dataset.labels, dataset.domains, splits == "train",
                             info.num_classes, info.num_domains, dataset.groups,
                             info.domain_names)
    empty_test = [k for k, t in enumerate(part.test) if len(t) == 0]
    if empty_test:
        raise DataError(
            f"clients {empty_test[:10]}{'...' if len(empty_test) > 10 else ''} would get no test "
            f"examples (their train mix has no test data to match). Use fewer clients than "
            f"{cfg.num_clients} or raise --min-samples."
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    match_umask(tmp_dir, directory=True)
    try:
        labels, domains = dataset.labels, dataset.domains
        where = {"files": _write_files, "packed": _write_packs,
                 "indices": _write_rows}[layout](dataset, part, tmp_dir)
        clients = [{"client_id": k, **where["clients"][k],
                    **_counts(tr, te, labels, domains, info)}
                   for k, (tr, te) in enumerate(zip(part.train, part.test))]
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "dataset": {"path": str(dataset.path.resolve()),
                        "relpath": os.path.relpath(dataset.path.resolve(), out_dir.resolve()),
                        "sha256": sha256, **file_stamp(dataset.path), **info.to_json()},
            "partition": recipe_record(cfg),
            "num_clients": cfg.num_clients,
            "layout": layout,
            **{k: v for k, v in where.items() if k != "clients"},
            "clients": clients,
        }
        if part.new or part.ood:  # who trains not: new clients, unseen-domain clients
            manifest["held_out"] = {"new_clients": part.new, "ood_domains": part.ood}
        write_json(manifest, tmp_dir / MANIFEST)
        if out_dir.exists() and not overwrite and _matches(out_dir, cfg, layout, sha256=sha256):
            shutil.rmtree(tmp_dir, ignore_errors=True)  # a parallel writer made it meanwhile:
            return out_dir  # keep theirs, which runs may already be reading
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp_dir, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.replace(tmp_dir, out_dir)
            except OSError:
                if not _matches(out_dir, cfg, layout, sha256=sha256):
                    raise
                shutil.rmtree(tmp_dir, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return out_dir


def _write_rows(dataset: Dataset, part, out: Path) -> dict:
    """The indices layout: one int64 column of every client's rows, client after client."""
    rows = [np.concatenate([tr, te]).astype(np.int64) for tr, te in zip(part.train, part.test)]
    starts = np.cumsum([0, *map(len, rows)])
    table = pa.table({"row": np.concatenate(rows) if rows else np.zeros(0, np.int64)})
    digest = write_table(table, out / ROWS)
    return {"rows": {"file": ROWS, "sha256": digest, **file_stamp(out / ROWS)},
            "clients": [{"start": int(s), "sha256": rows_sha256(r)}
                        for s, r in zip(starts, rows)]}


def _write_files(dataset: Dataset, part, out: Path) -> dict:
    clients = []
    for k, (tr, te) in enumerate(zip(part.train, part.test)):
        rows = pa.array(np.concatenate([tr, te]))
        path = out / shard_name(k)
        digest = write_table(dataset.table.take(rows), path, rows_per_batch(dataset.info))
        clients.append({"file": shard_name(k), "sha256": digest, **file_stamp(path)})
    return {"clients": clients}


def _write_packs(dataset: Dataset, part, out: Path) -> dict:
    """Packs of ``PACK`` clients, one record batch a client, taken and written one client
    at a time (memory: one client's rows)."""
    clients, packs = [], []
    n = len(part.train)
    for j, first in enumerate(range(0, n, PACK)):
        path = out / pack_name(j)
        with pa.OSFile(str(path), "wb") as sink, \
                pa.ipc.new_file(sink, dataset.table.schema) as writer:
            for k in range(first, min(first + PACK, n)):
                rows = pa.array(np.concatenate([part.train[k], part.test[k]]))
                writer.write_table(dataset.table.take(rows).combine_chunks(),
                                   max_chunksize=len(rows))  # each client has test rows
        packs.append({"file": path.name, "sha256": sha256_file(path), **file_stamp(path)})
        written = pa.ipc.open_file(pa.memory_map(str(path), "r"))  # hashed as read
        clients += [{"file": path.name, "batch": b,
                     "sha256": batch_sha256(written.get_batch(b))}
                    for b in range(written.num_record_batches)]
    return {"clients": clients, "packs": packs}


def made_from(out_dir: Path, dataset_path: Path, cfg: PartitionConfig) -> bool:
    """``out_dir`` holds this recipe's partition (default layout) of the dataset at
    ``dataset_path``, and that file still has the size and first and last MiB the
    manifest recorded: a run that starts again need not hash the whole dataset."""
    try:
        return _matches(out_dir, cfg.recipe(0), resolve_layout("auto"),
                        dataset_path=Path(dataset_path))
    except OSError:
        return False


def outdated(out_dir: Path) -> bool:
    """``out_dir`` holds a partition an older rayfed_bpt wrote (still readable)."""
    m = _manifest(out_dir)
    return m is not None and int(m.get("schema_version", 0)) < SCHEMA_VERSION


def _manifest(out_dir: Path) -> dict | None:
    try:
        m = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return m if isinstance(m, dict) else None


def _matches(out_dir: Path, cfg: PartitionConfig, layout: str, sha256: str = "",
             dataset_path: Path | None = None) -> bool:
    """``out_dir`` is this version's partition by ``cfg`` in ``layout``, complete, of the
    dataset whose sha256 is ``sha256`` (or, read 2 MiB of: at ``dataset_path``)."""
    m = _manifest(out_dir)
    if m is None or m.get("schema_version") != SCHEMA_VERSION or m.get("layout") != layout \
            or m.get("partition") != recipe_record(cfg) or not _files_present(out_dir, m):
        return False
    recorded = m.get("dataset", {})
    if dataset_path is None:
        return bool(sha256) and recorded.get("sha256") == sha256
    stamp = file_stamp(dataset_path)
    return (recorded.get("path") == str(dataset_path.resolve())
            and (recorded.get("size"), recorded.get("edges")) == (stamp["size"], stamp["edges"]))


def _files_present(out_dir: Path, m: dict) -> bool:
    """Every file the manifest ``m`` lists in ``out_dir`` is there."""
    try:
        names = {m["rows"]["file"]} if m.get("layout") == "indices" else \
            {c["file"] for c in m.get("clients", [])}
    except (KeyError, TypeError, AttributeError):
        return False
    return all((out_dir / f).exists() for f in names)
