"""Reading a partition: its manifest checked, each client's rows handed out in place.

Three layouts (``shards.py`` writes them). ``indices`` (the default): the manifest
and ``rows.arrow``, each client's row numbers into the one dataset file, which every
reader memory-maps; a partition costs kilobytes. ``files`` (one Arrow file per
client) and ``packed`` (a record batch per client, many clients a file) hold copies
of the rows; partitions written by earlier versions have these, and still read.

A client's images are an ``ImageRows`` over the memory-mapped column: pixels are read
(and decoded) per batch by ``take``, never a whole split at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import DataError
from .arrow_io import check_stamp, read_table, sha256_file, write_json
from .columns import ImageColumn, ImageRows
from .dataset import Dataset, load_dataset
from .schema import DatasetInfo, check_schema_version, info_from_schema

MANIFEST = "manifest.json"
ROWS = "rows.arrow"


def batch_sha256(batch: pa.RecordBatch) -> str:
    """A client's rows in a pack: the sha256 of its record batch's IPC message."""
    return hashlib.sha256(batch.serialize()).hexdigest()


def rows_sha256(rows: np.ndarray) -> str:
    """A client's rows in the indices layout: the sha256 of its int64 row numbers."""
    return hashlib.sha256(np.ascontiguousarray(rows, dtype="<i8").tobytes()).hexdigest()


@dataclass
class ClientShard:
    """One client's data: its train rows, then its test rows. Images stay in the mapped
    file (``ImageRows``); labels, domains and ids are small arrays."""

    client_id: int
    image_rows: ImageRows
    columns: dict[str, np.ndarray]  # label, domain, id: one entry per row
    num_train: int
    num_test: int

    def _cut(self, split: str) -> slice:
        return slice(0, self.num_train) if split == "train" else slice(self.num_train, None)

    def images(self, split: str) -> ImageRows:
        return ImageRows(self.image_rows.column, self.image_rows.rows[self._cut(split)])

    def labels(self, split: str) -> np.ndarray:
        return self.columns["label"][self._cut(split)]

    def domains(self, split: str) -> np.ndarray:
        return self.columns["domain"][self._cut(split)]

    def ids(self, split: str) -> np.ndarray:
        return self.columns["id"][self._cut(split)]


def _table_shard(client_id: int, table: pa.Table, info: DatasetInfo, n_tr: int, n_te: int,
                 threads: int) -> ClientShard:
    """A shard whose rows are a table of their own (the files and packed layouts)."""
    column = ImageColumn(table.column("image"), info, threads)
    cols = {c: table.column(c).to_numpy() for c in ("label", "domain", "id")}
    return ClientShard(client_id, ImageRows(column, np.arange(table.num_rows)), cols, n_tr, n_te)


class PartitionReader:
    """Opens a partition folder, checks its manifest, and hands out client shards.
    ``threads``: threads that decode encoded pixels (the reading process's CPUs)."""

    def __init__(self, root: str | os.PathLike, verify: bool = True, threads: int = 1):
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
        self._threads = threads
        self._clients = {c["client_id"]: c for c in self.manifest["clients"]}
        self._packs: OrderedDict[str, pa.ipc.RecordBatchFileReader] = OrderedDict()

    @property
    def threads(self) -> int:
        return self._threads

    @threads.setter
    def threads(self, n: int) -> None:
        self._threads = n
        if "dataset" in self.__dict__:  # already open: its column decodes with n threads
            self.dataset.image_column.threads = n

    @property
    def num_clients(self) -> int:
        return len(self._clients)

    @property
    def client_ids(self) -> list[int]:
        return sorted(self._clients)

    @property
    def new_clients(self) -> list[int]:
        """Clients held out of training (``data.new_clients``)."""
        return list(self.manifest.get("held_out", {}).get("new_clients", []))

    @property
    def ood_clients(self) -> dict[str, int]:
        """Held-out domain -> the client holding its rows (``data.ood_domains``)."""
        return dict(self.manifest.get("held_out", {}).get("ood_domains", {}))

    @property
    def training_ids(self) -> list[int]:
        """The clients that train and count in the round metrics: all but the held out."""
        held = {*self.new_clients, *self.ood_clients.values()}
        return [k for k in self.client_ids if k not in held]

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

    # ----- the indices layout: one dataset, row numbers per client -----------------------
    @property
    def dataset_path(self) -> Path:
        """The dataset this partition indexes: where the manifest says, else at the same
        place relative to the partition folder (a data root mounted elsewhere)."""
        d = self.manifest["dataset"]
        for p in (Path(d["path"]), self.root / d.get("relpath", "\0")):
            if p.exists():
                return p
        raise DataError(f"the dataset {d['path']} that partition {self.root} indexes is "
                        "missing. Put it back (or the data root where the partition expects it), "
                        "or make the partition again from the dataset you have.")

    @cached_property
    def dataset(self) -> Dataset:
        ds = load_dataset(self.dataset_path, verify=False)  # checked by stamp or verify_all
        mine = {k: v for k, v in self.info.to_json().items() if k not in ("source",)}
        theirs = {k: v for k, v in ds.info.to_json().items() if k not in ("source",)}
        if mine != theirs:
            raise DataError(f"dataset {ds.path} is not the one partition {self.root} was made "
                            "from (its classes, domains or image format differ); make the "
                            "partition again (`rayfed-bpt data partition --overwrite`).")
        ds.image_column.threads = self.threads
        return ds

    @cached_property
    def _rows(self) -> np.ndarray:
        path = self.root / ROWS
        try:
            table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
            return table.column("row").to_numpy()  # one chunk: a view of the map
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError, KeyError) as e:
            raise DataError(f"{path} is not a readable rows file ({e}); make the partition "
                            "again (`rayfed-bpt data partition --overwrite`).") from None

    @cached_property
    def _small_columns(self) -> dict[str, np.ndarray]:
        """The dataset's labels, domains and ids (12 bytes an example), read once."""
        t = self.dataset.table
        return {c: t.column(c).to_numpy() for c in ("label", "domain", "id")}

    # ----- checks ---------------------------------------------------------------------------
    def check_shard(self, client_id: int) -> None:
        """The client's rows match their manifest hash, or a DataError saying what to do."""
        e = self.entry(client_id)
        if self.layout == "indices":
            self._check(f"client {client_id}'s rows (in {self.root / ROWS})", e["sha256"],
                        rows_sha256(self._client_rows(e)))
            return
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

    def files(self) -> list[tuple[Path, dict]]:
        """(path, manifest record) of every file this partition reads: the dataset and
        rows file, each pack, or each client's shard."""
        m = self.manifest
        if self.layout == "indices":
            return [(self.dataset_path, m["dataset"]), (self.root / ROWS, m["rows"])]
        if self.layout == "packed":
            return [(self.root / p["file"], p) for p in m["packs"]]
        return [(self.root / c["file"], c) for c in m["clients"]]

    def verify_stamps(self) -> None:
        """What every run start checks, in time independent of the data's size: each
        file's size, modification time and first and last MiB against the manifest
        (a partition written before stamps existed is hashed in full instead)."""
        found = self.files()
        if not all("edges" in rec for _, rec in found):
            self.verify_all()
            return
        renewed = False
        for path, rec in found:
            stamp = check_stamp(path, rec, rec.get("sha256", ""), "file")
            if stamp is not None:  # hashed in full and unchanged: record its new time
                rec.update(stamp)
                renewed = True
        if renewed:
            try:
                write_json(self.manifest, self.root / MANIFEST)  # the next start: O(1) again
            except OSError:
                pass  # read-only storage: every start hashes the file, as it must
        if self.layout == "indices":
            self.dataset  # noqa: B018 - opened: its classes and format are checked

    def verify_all(self) -> None:
        """Check every byte: each file's sha256 and each client's rows (``rayfed-bpt data
        verify``; a run checks stamps)."""
        for path, rec in self.files():
            if not path.exists():
                raise DataError(f"{path} listed in the manifest is missing; re-run "
                                "`rayfed-bpt data partition --overwrite`.")
            if self.layout != "files":  # files: each shard is checked as a client below
                self._check(str(path), rec["sha256"], sha256_file(path))
        if self.layout != "packed":
            for k in self.client_ids:
                self.check_shard(k)

    # ----- reading --------------------------------------------------------------------------
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
            self._check_same(info_from_schema(reader.schema, f"pack {path}"), f"pack {path}")
        self._packs[name] = reader
        while len(self._packs) > 8:
            self._packs.popitem(last=False)
        return reader

    def _check_same(self, info: DatasetInfo, what: str) -> None:
        if info.class_names != self.info.class_names or info.domain_names != self.info.domain_names:
            raise DataError(f"{what} belongs to another dataset than its manifest says")

    def _client_rows(self, e: dict) -> np.ndarray:
        return self._rows[e["start"]: e["start"] + e["num_train"] + e["num_test"]]

    def load(self, client_id: int) -> ClientShard:
        e = self.entry(client_id)
        n_tr, n_te = e["num_train"], e["num_test"]
        if self.verify:
            self.check_shard(client_id)
        if self.layout == "indices":
            rows = self._client_rows(e)
            cols = {c: v[rows] for c, v in self._small_columns.items()}
            return ClientShard(client_id, ImageRows(self.dataset.image_column, rows), cols,
                               n_tr, n_te)
        path = self.root / e["file"]
        if "batch" in e:
            pack = self._pack(e["file"])
            table, info = pa.Table.from_batches([pack.get_batch(e["batch"])]), self.info
        else:
            table, info = read_table(path, "shard")
            self._check_same(info, f"shard {path}")
        if table.num_rows != n_tr + n_te:
            raise DataError(f"shard {path} has {table.num_rows} rows, manifest says {n_tr + n_te}")
        return _table_shard(client_id, table, info, n_tr, n_te, self.threads)
