"""Arrow datasets, partitioners and client shards. Knows nothing of Ray or models."""

from ..config import PartitionConfig
from .columns import ImageColumn, ImageRows
from .dataset import Dataset, default_data_root, load_dataset, save_dataset
from .importers import ImportRequest, importer_names, register_importer
from .partition import partition_indices, partitioner_names, register_partitioner
from .prepare import builtin_dataset_path, dataset_path, ensure_builtin, prepare
from .reader import ClientShard, PartitionReader
from .schema import SCHEMA_VERSION, DatasetInfo, make_table
from .shards import write_partition
from .stream import ImportPlan

__all__ = [
    "SCHEMA_VERSION",
    "ClientShard",
    "Dataset",
    "DatasetInfo",
    "ImageColumn",
    "ImageRows",
    "ImportPlan",
    "ImportRequest",
    "PartitionConfig",
    "PartitionReader",
    "builtin_dataset_path",
    "dataset_path",
    "default_data_root",
    "ensure_builtin",
    "importer_names",
    "load_dataset",
    "make_table",
    "partition_indices",
    "partitioner_names",
    "prepare",
    "register_importer",
    "register_partitioner",
    "save_dataset",
    "write_partition",
]
