"""Arrow datasets, partitioners and client shards. Knows nothing of Ray or models."""

from ..config import PartitionConfig
from .dataset import Dataset, default_data_root, load_dataset, save_dataset
from .partition import partition_indices, partitioner_names, register_partitioner
from .prepare import builtin_dataset_path, dataset_path, ensure_builtin, prepare
from .schema import SCHEMA_VERSION, DatasetInfo
from .shards import ClientShard, PartitionReader, write_partition

__all__ = [
    "SCHEMA_VERSION",
    "ClientShard",
    "Dataset",
    "DatasetInfo",
    "PartitionConfig",
    "PartitionReader",
    "builtin_dataset_path",
    "dataset_path",
    "default_data_root",
    "ensure_builtin",
    "load_dataset",
    "partition_indices",
    "partitioner_names",
    "prepare",
    "register_partitioner",
    "save_dataset",
    "write_partition",
]
