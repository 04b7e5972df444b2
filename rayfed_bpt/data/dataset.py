"""A whole imported dataset: one Arrow IPC file plus a small JSON sidecar.

The sidecar (``<name>.json``) repeats the metadata and records the file's
sha256, so a partition can name exactly which dataset it was cut from.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import DataError
from .arrow_io import read_table, sha256_file, write_json, write_table
from .columns import ImageColumn
from .schema import DatasetInfo, check_schema_version, int_column, rows_per_batch


def default_data_root() -> Path:
    """Where built-in data sets and partitions live unless told otherwise."""
    env = os.environ.get("RAYFED_BPT_DATA")
    if env:
        return Path(env).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return (Path(cache) / "rayfed_bpt").resolve()


@dataclass
class Dataset:
    """A memory-mapped dataset: ``image_column`` reads pixels in place, by row; the
    small columns (labels, domains, splits, groups) are numpy arrays."""

    path: Path
    table: pa.Table
    info: DatasetInfo
    sha256: str
    sidecar: dict = field(default_factory=dict)  # the .json: counts, skipped files

    @cached_property
    def image_column(self) -> ImageColumn:
        return ImageColumn(self.table.column("image"), self.info)

    @property
    def images(self) -> np.ndarray:
        """Every image decoded into one array: for small data sets (the built-in one)."""
        return self.image_column.take(np.arange(len(self)))

    @property
    def labels(self) -> np.ndarray:
        return int_column(self.table, "label")

    @property
    def domains(self) -> np.ndarray:
        return int_column(self.table, "domain")

    @property
    def splits(self) -> np.ndarray:
        return split_array(self.table.column("split"))

    @property
    def groups(self) -> np.ndarray | None:
        return int_column(self.table, "group") if self.info.groups else None

    @property
    def ids(self) -> np.ndarray:
        return int_column(self.table, "id")

    def __len__(self) -> int:
        return self.table.num_rows


def split_array(column: pa.ChunkedArray) -> np.ndarray:
    """A split column as a numpy array of "train"/"test" (through Arrow's dictionary
    encoding: no Python string per row)."""
    encoded = column.dictionary_encode().combine_chunks()
    names = np.asarray(encoded.dictionary.to_pylist() or ["train"])
    return names[encoded.indices.to_numpy(zero_copy_only=False)]


def save_dataset(table: pa.Table, info: DatasetInfo, path: str | os.PathLike,
                 **extra) -> Path:
    """Write a table that is in memory (a small source) as a dataset file and its sidecar;
    a streamed import writes its batches itself and calls ``write_sidecar``."""
    path = Path(path)
    digest = write_table(table, path, max_rows=rows_per_batch(info))
    splits = split_array(table.column("split"))
    write_sidecar(path, info, digest, {s: int(np.sum(splits == s)) for s in ("train", "test")},
                  **extra)
    return path


def write_sidecar(path: Path, info: DatasetInfo, digest: str, counts: dict[str, int],
                  **extra) -> None:
    """``<name>.json`` beside the dataset: its info, hash, rows per split (and what an
    import adds: the files it skipped)."""
    num_rows = sum(counts.values())
    write_json({**info.to_json(), "file": path.name, "sha256": digest, "num_rows": num_rows,
                "split_counts": counts, **extra}, path.with_suffix(".json"))


def load_dataset(path: str | os.PathLike, verify: bool = True) -> Dataset:
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder; pass the dataset's .arrow file.")
    sidecar = path.with_suffix(".json")
    table, info = read_table(path, "dataset")
    digest, meta = "", {}
    if sidecar.exists():
        try:
            meta = json.loads(sidecar.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"dataset sidecar {sidecar} is not valid JSON ({e}); restore it, or "
                            "re-create the dataset with `rayfed-bpt data prepare --overwrite`."
                            ) from None
        if not isinstance(meta, dict):
            raise DataError(f"dataset sidecar {sidecar} is not a JSON object; re-create the "
                            "dataset with `rayfed-bpt data prepare --overwrite`.")
        check_schema_version(int(meta.get("schema_version", -1)), f"dataset sidecar {sidecar}")
        digest = meta.get("sha256", "")
        if verify and digest:
            actual = sha256_file(path)
            if actual != digest:
                raise DataError(
                    f"dataset {path} does not match the hash in {sidecar.name} (file changed "
                    "after it was written). Re-create it with "
                    "`rayfed-bpt data prepare --overwrite`."
                )
    return Dataset(path=path, table=table, info=info, sha256=digest, sidecar=meta)
