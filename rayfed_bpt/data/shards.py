"""Client shards on disk: Arrow IPC files plus ``manifest.json``.

Two layouts. ``files``: one IPC file per client (up to ``FILES_UP_TO`` clients).
``packed``: ``PACK`` clients per IPC file, one record batch each, so 100,000
clients are ~100 files, not 100,000. Either way a client's rows are its train
rows, then its test rows, read as zero-copy views of a memory-mapped file. The
manifest records, per client, its file (and batch), a sha256 of its rows
(of the file; packed: of the batch's IPC message), counts per label and domain;
packed, also each pack file's sha256 (one sequential hash per pack when a run
checks the whole partition); and for the whole partition the dataset it was
cut from, the config, the seed and the schema version. Readers check all of
that before handing out data, and read both layouts.

The partition is written into a temporary folder beside the target and
renamed into place when complete, so an interrupted write leaves nothing
under the real name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..config import PartitionConfig
from ..errors import DataError
from .arrow_io import match_umask, read_table, sha256_file, write_json, write_table
from .dataset import Dataset
from .partition import partition_indices, recipe_record
from .schema import (
    SCHEMA_VERSION,
    DatasetInfo,
    check_schema_version,
    images_view,
    info_from_schema,
)

MANIFEST = "manifest.json"
#: ``layout=auto``: one file per client up to this many clients, packed above
FILES_UP_TO = 1000
#: clients per pack file in the packed layout
PACK = 1024
LAYOUTS = ("auto", "files", "packed")


def shard_name(client_id: int) -> str:
    return f"client_{client_id:05d}.arrow"


def pack_name(index: int) -> str:
    return f"pack_{index:05d}.arrow"


def batch_sha256(batch: pa.RecordBatch) -> str:
    """A client's rows in a pack: the sha256 of its record batch's IPC message."""
    return hashlib.sha256(batch.serialize()).hexdigest()


def resolve_layout(layout: str, num_clients: int) -> str:
    if layout not in LAYOUTS:
        raise DataError(f"layout={layout!r}; allowed: {', '.join(LAYOUTS)}")
    if layout == "auto":
        return "files" if num_clients <= FILES_UP_TO else "packed"
    return layout


def write_partition(
    dataset: Dataset, cfg: PartitionConfig, out_dir: str | os.PathLike, overwrite: bool = False,
    layout: str = "auto",
) -> Path:
    """Partition ``dataset`` by ``cfg`` and write shards + manifest to ``out_dir``
    (``layout``: files, packed, or auto: by the number of clients)."""
    out_dir = Path(out_dir)
    cfg = cfg.recipe(0)  # the bare recipe (a run's DataConfig carries more); unset seed: 0
    if out_dir.exists() and not overwrite:
        if _same_recipe(out_dir, dataset, cfg):
            return out_dir  # already written from this dataset with this config
        raise DataError(
            f"{out_dir} already exists with another dataset or config. Pass --overwrite to "
            "replace it, or choose another --out."
        )
    layout = resolve_layout(layout, cfg.num_clients)
    info = dataset.info
    splits = dataset.splits
    part = partition_indices(
        cfg,
        dataset.labels,
        dataset.domains,
        splits == "train",
        info.num_classes,
        info.num_domains,
    )
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
        where = (_write_files(dataset, part, tmp_dir) if layout == "files"
                 else _write_packs(dataset, part, tmp_dir))
        clients = []
        for k, (tr, te) in enumerate(zip(part.train, part.test)):
            clients.append(
                {
                    "client_id": k,
                    **where["clients"][k],
                    "num_train": int(len(tr)),
                    "num_test": int(len(te)),
                    "label_counts": {
                        "train": np.bincount(labels[tr], minlength=info.num_classes).tolist(),
                        "test": np.bincount(labels[te], minlength=info.num_classes).tolist(),
                    },
                    "domain_counts": {
                        "train": np.bincount(domains[tr], minlength=info.num_domains).tolist(),
                        "test": np.bincount(domains[te], minlength=info.num_domains).tolist(),
                    },
                }
            )
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "dataset": {"path": str(dataset.path), "sha256": dataset.sha256,
                        **file_stamp(dataset.path), **info.to_json()},
            "partition": recipe_record(cfg),
            "num_clients": cfg.num_clients,
            "layout": layout,
            **({"packs": where["packs"]} if layout == "packed" else {}),
            "clients": clients,
        }
        write_json(manifest, tmp_dir / MANIFEST)
        if out_dir.exists() and not overwrite and _same_recipe(out_dir, dataset, cfg):
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
                if not _same_recipe(out_dir, dataset, cfg):
                    raise
                shutil.rmtree(tmp_dir, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return out_dir


def _write_files(dataset: Dataset, part, out: Path) -> dict:
    clients = []
    for k, (tr, te) in enumerate(zip(part.train, part.test)):
        rows = pa.array(np.concatenate([tr, te]))
        clients.append({"file": shard_name(k),
                        "sha256": write_table(dataset.table.take(rows), out / shard_name(k))})
    return {"clients": clients}


def _write_packs(dataset: Dataset, part, out: Path) -> dict:
    clients, packs = [], []
    n = len(part.train)
    for j, first in enumerate(range(0, n, PACK)):
        ids = range(first, min(first + PACK, n))
        rows = [np.concatenate([part.train[k], part.test[k]]) for k in ids]
        table = dataset.table.take(pa.array(np.concatenate(rows))).combine_chunks()
        batches, offset = [], 0
        for r in rows:  # one record batch per client (each has test rows): zero-copy slices
            [batch] = table.slice(offset, len(r)).to_batches()
            batches.append(batch)
            offset += len(r)
        name = pack_name(j)
        packs.append({"file": name, "sha256": write_table(
            pa.Table.from_batches(batches, table.schema), out / name, keep_batches=True)})
        written = pa.ipc.open_file(pa.memory_map(str(out / name), "r"))  # hashed as read
        clients += [{"file": name, "batch": b, "sha256": batch_sha256(written.get_batch(b))}
                    for b in range(written.num_record_batches)]
    return {"clients": clients, "packs": packs}


def file_stamp(path: str | os.PathLike) -> dict[str, int]:
    """A file's size and modification time: what says, without reading it, that it is
    the file a manifest was made from."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def made_from(out_dir: Path, dataset_path: Path, cfg: PartitionConfig) -> bool:
    """``out_dir`` holds this recipe's partition of the dataset at ``dataset_path``, and
    that file is untouched since (same size and modification time as the manifest
    recorded): a run that starts again need not hash the whole dataset to know it."""
    try:
        m = json.loads((out_dir / MANIFEST).read_text())
        recorded = m.get("dataset", {})
        return (m.get("schema_version") == SCHEMA_VERSION
                and m.get("partition") == recipe_record(cfg.recipe(0))
                and recorded.get("path") == str(dataset_path)
                and {k: recorded.get(k) for k in ("size", "mtime_ns")} == file_stamp(dataset_path)
                and all((out_dir / f).exists() for f in {c["file"] for c in m.get("clients", [])}))
    except (OSError, json.JSONDecodeError, AttributeError, TypeError):
        return False


def _same_recipe(out_dir: Path, dataset: Dataset, cfg: PartitionConfig) -> bool:
    try:
        m = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (
        m.get("schema_version") == SCHEMA_VERSION
        and m.get("partition") == recipe_record(cfg)
        and bool(dataset.sha256)
        and m.get("dataset", {}).get("sha256") == dataset.sha256
        and all((out_dir / f).exists() for f in {c["file"] for c in m.get("clients", [])})
    )


@dataclass
class ClientShard:
    """One client's data: numpy views into its memory-mapped shard."""

    client_id: int
    table: pa.Table
    num_train: int
    num_test: int

    def _part(self, column: str, split: str) -> np.ndarray:
        arr = images_view(self.table) if column == "image" else self.table.column(column).to_numpy()
        return arr[: self.num_train] if split == "train" else arr[self.num_train :]

    def images(self, split: str) -> np.ndarray:
        return self._part("image", split)

    def labels(self, split: str) -> np.ndarray:
        return self._part("label", split)

    def domains(self, split: str) -> np.ndarray:
        return self._part("domain", split)

    def ids(self, split: str) -> np.ndarray:
        return self._part("id", split)


class PartitionReader:
    """Opens a partition folder, checks its manifest, and memory-maps client shards."""

    def __init__(self, root: str | os.PathLike, verify: bool = True):
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.exists():
            raise DataError(
                f"no {MANIFEST} in {self.root}: not a partition folder. Create one with "
                "`rayfed-bpt data partition`."
            )
        try:
            self.manifest = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path} is not valid JSON ({e}); re-run `rayfed-bpt data partition`."
            ) from e
        missing = [k for k in ("schema_version", "dataset", "clients")
                   if not isinstance(self.manifest, dict) or k not in self.manifest]
        if missing:
            raise DataError(f"{path} lacks {missing}: not a manifest written by rayfed-bpt; "
                            "re-run `rayfed-bpt data partition --overwrite`.")
        check_schema_version(int(self.manifest.get("schema_version", -1)), f"manifest {path}")
        self.info = DatasetInfo.from_json(self.manifest["dataset"], f"manifest {path}")
        self.verify = verify
        self._clients = {c["client_id"]: c for c in self.manifest["clients"]}
        self._packs: OrderedDict[str, pa.ipc.RecordBatchFileReader] = OrderedDict()

    @property
    def num_clients(self) -> int:
        return len(self._clients)

    @property
    def client_ids(self) -> list[int]:
        return sorted(self._clients)

    def entry(self, client_id: int) -> dict:
        if client_id not in self._clients:
            raise DataError(
                f"client {client_id} is not in partition {self.root} "
                f"(clients 0..{self.num_clients - 1})"
            )
        return self._clients[client_id]

    @property
    def layout(self) -> str:
        return self.manifest.get("layout", "files")

    def check_shard(self, client_id: int) -> None:
        """The shard exists and matches its manifest hash, or a DataError saying what to do."""
        e = self.entry(client_id)
        path = self.root / e["file"]
        if not path.exists():
            raise DataError(
                f"shard {path} listed in the manifest is missing; re-run "
                "`rayfed-bpt data partition --overwrite`."
            )
        if "batch" in e:
            self._check(f"client {client_id}'s shard (batch {e['batch']} of {path})", e["sha256"],
                        batch_sha256(self._pack(e["file"]).get_batch(e["batch"])))
        else:
            self._check(f"shard {path}", e["sha256"], sha256_file(path))

    @staticmethod
    def _check(what: str, expected: str, actual: str) -> None:
        if actual != expected:
            raise DataError(
                f"{what} does not match its manifest hash (expected {expected[:12]}"
                f"..., found {actual[:12]}...): it changed after the partition was written. "
                "Re-run `rayfed-bpt data partition --overwrite`."
            )

    def verify_all(self) -> None:
        """Check every shard's hash (once per run, before any client actor opens one);
        packed: each pack file's, in one sequential read."""
        if self.layout != "packed":
            for k in self.client_ids:
                self.check_shard(k)
            return
        for pack in self.manifest["packs"]:
            path = self.root / pack["file"]
            if not path.exists():
                raise DataError(f"pack {path} listed in the manifest is missing; re-run "
                                "`rayfed-bpt data partition --overwrite`.")
            self._check(f"pack {path}", pack["sha256"], sha256_file(path))

    def _pack(self, name: str) -> pa.ipc.RecordBatchFileReader:
        """An opened (memory-mapped) pack; the last few stay open."""
        reader = self._packs.pop(name, None)
        if reader is None:
            path = self.root / name
            try:
                reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
            except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
                raise DataError(f"pack {path} is not a readable Arrow IPC file ({e}); re-run "
                                "`rayfed-bpt data partition --overwrite`.") from e
            info = info_from_schema(reader.schema, f"pack {path}")
            if (info.class_names != self.info.class_names
                    or info.domain_names != self.info.domain_names):
                raise DataError(f"pack {path} belongs to another dataset than its manifest says")
        self._packs[name] = reader
        while len(self._packs) > 8:
            self._packs.popitem(last=False)
        return reader

    def load(self, client_id: int) -> ClientShard:
        e = self.entry(client_id)
        path = self.root / e["file"]
        if self.verify:
            self.check_shard(client_id)
        if "batch" in e:
            pack = self._pack(e["file"])
            table, info = pa.Table.from_batches([pack.get_batch(e["batch"])]), self.info
        else:
            table, info = read_table(path, "shard")
        if info.class_names != self.info.class_names or info.domain_names != self.info.domain_names:
            raise DataError(f"shard {path} belongs to another dataset than its manifest says")
        n_tr, n_te = e["num_train"], e["num_test"]
        if table.num_rows != n_tr + n_te:
            raise DataError(f"shard {path} has {table.num_rows} rows, manifest says {n_tr + n_te}")
        return ClientShard(client_id, table, n_tr, n_te)
