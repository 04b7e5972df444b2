"""Arrow IPC files: atomic writes, memory-mapped reads, content hashes.

Every file is written under a temporary name in the same folder and renamed
into place, so a crash never leaves a half-written file under the real name.
Reads memory-map the file: the rows are never copied into Python objects.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import pyarrow as pa

from ..errors import DataError
from .schema import DatasetInfo, info_from_schema


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def match_umask(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a file made by mkstemp (0600) or a folder made by mkdtemp (0700) the mode any
    new file or folder gets: shared storage must stay readable to whoever the umask allows
    (other nodes, other accounts)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if directory else 0o666) & ~mask)


def _tmp_path(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    match_umask(tmp)
    return Path(tmp)


def write_table(table: pa.Table, path: str | os.PathLike, keep_batches: bool = False) -> str:
    """Write ``table`` as one uncompressed IPC file (mmap-friendly); return its sha256.
    One record batch, or with ``keep_batches`` the table's own (a pack: one per client)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            if keep_batches:
                for batch in table.to_batches():
                    writer.write_batch(batch)
            else:
                table = table.combine_chunks()
                writer.write_table(table, max_chunksize=max(table.num_rows, 1))
        digest = sha256_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest


def write_json(obj: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_table(path: str | os.PathLike, what: str = "Arrow file") -> tuple[pa.Table, DatasetInfo]:
    """Memory-map an IPC file written by :func:`write_table` and check its schema."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} {path} does not exist.")
    try:
        source = pa.memory_map(str(path), "r")
        table = pa.ipc.open_file(source).read_all()
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        raise DataError(
            f"{what} {path} is not a readable Arrow IPC file ({e}). It is truncated or "
            "corrupt: delete it and write it again (`rayfed-bpt data prepare` / "
            "`rayfed-bpt data partition --overwrite`)."
        ) from e
    return table, info_from_schema(table.schema, f"{what} {path}")
