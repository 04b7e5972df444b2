"""The one Arrow schema every data source is imported into.

Images are stored as a fixed-shape ``uint8`` tensor (H, W, C) column, not as
encoded PNG bytes: a memory-mapped shard then hands out a zero-copy
``numpy`` view of its images, and no process decodes anything per step.

Columns
    id      int64   stable example id within the dataset
    image   fixed_shape_tensor<uint8>[H, W, C]
    label   int16   index into ``class_names``
    domain  int16   index into ``domain_names``
    split   string  "train" or "test"

Schema-level metadata (key ``rayfed_bpt``) is a JSON object with
``schema_version``, ``name``, ``class_names``, ``domain_names``,
``image_shape`` and ``source`` (free-form provenance).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from ..errors import DataError

SCHEMA_VERSION = 1
META_KEY = b"rayfed_bpt"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a reader needs to know about a dataset besides its rows."""

    name: str
    class_names: list[str]
    domain_names: list[str]
    image_shape: tuple[int, int, int]
    source: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_domains(self) -> int:
        return len(self.domain_names)

    def to_json(self) -> dict:
        d = asdict(self)
        d["image_shape"] = list(self.image_shape)
        return d

    @classmethod
    def from_json(cls, d: dict, where: str = "dataset") -> DatasetInfo:
        version = int(d.get("schema_version", -1))
        check_schema_version(version, where)
        return cls(
            name=d["name"],
            class_names=list(d["class_names"]),
            domain_names=list(d["domain_names"]),
            image_shape=tuple(int(x) for x in d["image_shape"]),
            source=dict(d.get("source", {})),
            schema_version=version,
        )


def check_schema_version(version: int, where: str) -> None:
    if version > SCHEMA_VERSION:
        raise DataError(
            f"{where} was written with schema version {version}, but this rayfed_bpt reads "
            f"versions up to {SCHEMA_VERSION}. Upgrade rayfed_bpt, or re-create the file with "
            "this version (`rayfed-bpt data prepare` / `rayfed-bpt data partition`)."
        )
    if version < 1:
        raise DataError(
            f"{where} carries no valid rayfed_bpt schema version ({version}); it was not "
            "written by rayfed_bpt. Import it with `rayfed-bpt data prepare`."
        )


def arrow_schema(info: DatasetInfo) -> pa.Schema:
    h, w, c = info.image_shape
    fields = [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("image", pa.fixed_shape_tensor(pa.uint8(), [h, w, c]), nullable=False),
        pa.field("label", pa.int16(), nullable=False),
        pa.field("domain", pa.int16(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
    return pa.schema(fields, metadata={META_KEY: json.dumps(info.to_json()).encode()})


def info_from_schema(schema: pa.Schema, where: str) -> DatasetInfo:
    meta = schema.metadata or {}
    if META_KEY not in meta:
        raise DataError(
            f"{where} has no rayfed_bpt metadata: it is not a rayfed_bpt dataset or shard. "
            "Import the source with `rayfed-bpt data prepare`."
        )
    try:
        d = json.loads(meta[META_KEY])
    except json.JSONDecodeError as e:
        raise DataError(f"{where} has unreadable rayfed_bpt metadata ({e}).") from e
    info = DatasetInfo.from_json(d, where)
    expected = arrow_schema(info)
    if not schema.remove_metadata().equals(expected.remove_metadata()):
        raise DataError(
            f"{where} does not have the rayfed_bpt schema.\n  found:    {schema.remove_metadata()}"
            f"\n  expected: {expected.remove_metadata()}\nRe-create it with rayfed-bpt."
        )
    return info


def make_table(
    info: DatasetInfo,
    images: np.ndarray,
    labels: np.ndarray,
    domains: np.ndarray,
    splits: np.ndarray,
    ids: np.ndarray | None = None,
) -> pa.Table:
    """Build a table in the rayfed_bpt schema from numpy arrays."""
    n = len(images)
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if images.shape[1:] != tuple(info.image_shape):
        raise DataError(f"images have shape {images.shape[1:]}, dataset says {info.image_shape}")
    if not (len(labels) == len(domains) == len(splits) == n):
        raise DataError("images, labels, domains and splits differ in length")
    labels = np.asarray(labels, dtype=np.int16)
    domains = np.asarray(domains, dtype=np.int16)
    if n and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise DataError(f"labels outside [0, {info.num_classes}) in dataset {info.name}")
    if n and (domains.min() < 0 or domains.max() >= info.num_domains):
        raise DataError(f"domains outside [0, {info.num_domains}) in dataset {info.name}")
    bad = set(np.unique(splits).tolist()) - set(SPLITS)
    if bad:
        raise DataError(f"unknown split names {sorted(bad)}; allowed: {list(SPLITS)}")
    schema = arrow_schema(info)
    tensor_type = schema.field("image").type
    storage = pa.FixedSizeListArray.from_arrays(
        pa.array(images.reshape(-1)), int(np.prod(images.shape[1:]))
    )
    image_col = pa.ExtensionArray.from_storage(tensor_type, storage)
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    return pa.Table.from_arrays(
        [
            pa.array(ids),
            image_col,
            pa.array(labels),
            pa.array(domains),
            pa.array(splits.astype(str)),
        ],
        schema=schema,
    )


def images_view(table: pa.Table) -> np.ndarray:
    """The image column as one (N, H, W, C) uint8 array, zero-copy when it is one chunk."""
    col = table.column("image")
    if col.num_chunks == 1:
        return col.chunk(0).to_numpy_ndarray()
    if col.num_chunks == 0:
        h, w, c = col.type.shape
        return np.zeros((0, h, w, c), np.uint8)
    return np.concatenate([ch.to_numpy_ndarray() for ch in col.chunks])


def int_column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()
