"""A whole imported dataset: one Arrow IPC file plus a small JSON sidecar.

The sidecar (``<name>.json``) repeats the metadata and records the file's
sha256, so a partition can name exactly which dataset it was cut from.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import DataError
from .arrow_io import read_table, sha256_file, write_json, write_table
from .schema import DatasetInfo, check_schema_version, images_view, int_column


def default_data_root() -> Path:
    """Where built-in data sets and partitions live unless told otherwise."""
    env = os.environ.get("RAYFED_BPT_DATA")
    if env:
        return Path(env).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return (Path(cache) / "rayfed_bpt").resolve()


@dataclass
class Dataset:
    """A memory-mapped dataset. ``images`` etc. are numpy views of the mapped file."""

    path: Path
    table: pa.Table
    info: DatasetInfo
    sha256: str

    @property
    def images(self) -> np.ndarray:
        return images_view(self.table)

    @property
    def labels(self) -> np.ndarray:
        return int_column(self.table, "label")

    @property
    def domains(self) -> np.ndarray:
        return int_column(self.table, "domain")

    @property
    def splits(self) -> np.ndarray:
        return np.asarray(self.table.column("split").to_pylist())

    def __len__(self) -> int:
        return self.table.num_rows


def save_dataset(table: pa.Table, info: DatasetInfo, path: str | os.PathLike) -> Path:
    path = Path(path)
    digest = write_table(table, path)
    counts = {
        split: int(np.sum(np.asarray(table.column("split").to_pylist()) == split))
        for split in ("train", "test")
    }
    write_json(
        {
            **info.to_json(),
            "file": path.name,
            "sha256": digest,
            "num_rows": table.num_rows,
            "split_counts": counts,
        },
        path.with_suffix(".json"),
    )
    return path


def load_dataset(path: str | os.PathLike, verify: bool = True) -> Dataset:
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder; pass the dataset's .arrow file.")
    sidecar = path.with_suffix(".json")
    table, info = read_table(path, "dataset")
    digest = ""
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
    return Dataset(path=path, table=table, info=info, sha256=digest)
