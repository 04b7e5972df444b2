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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa

from ..errors import DataError
from .schema import DatasetInfo, info_from_schema

EDGE = 1 << 20


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


def tmp_path_for(path: Path) -> Path:
    """A new empty file beside ``path`` (same file system: renamed into place when done)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    match_umask(tmp)
    return Path(tmp)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A new file beside ``path`` to write, renamed onto ``path`` when the block ends
    and removed if it fails: a crash never leaves a half-written file under the real
    name (a hard kill leaves a ``.<name>.*.tmp``, which ``stale_tmp_files`` finds)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def stale_tmp_files(path: Path) -> list[Path]:
    """Temporary files a killed writer of ``path`` left beside it."""
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def write_batches(table: pa.Table, sink, max_rows: int | None = None) -> None:
    """``table`` into an IPC file ``sink``, uncompressed (mmap-friendly), in record batches
    of ``max_rows`` rows (the last one shorter; unset: one batch), cut where the rows
    are, whatever chunks the table came in. One array of a batch holds at most 2 GiB:
    a dataset's ``max_rows`` keeps every batch far below (``schema.rows_per_batch``)."""
    with pa.ipc.new_file(sink, table.schema) as writer:
        step = max(1, max_rows or table.num_rows)
        for start in range(0, max(table.num_rows, 1), step):
            part = table.slice(start, step).combine_chunks()  # at most one batch's bytes
            writer.write_table(part, max_chunksize=max(part.num_rows, 1))


def write_table(table: pa.Table, path: str | os.PathLike, max_rows: int | None = None,
                digest: bool = True) -> str:
    """``write_batches`` into the file ``path``, atomically; return its sha256 (with
    ``digest``; else "")."""
    with atomic_path(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink:
            write_batches(table, sink, max_rows)
        return sha256_file(tmp) if digest else ""


def file_stamp(path: str | os.PathLike) -> dict:
    """What says, reading 2 MiB, that a file is the one a manifest was made from: its
    size, modification time and the sha256 of its first and last MiB (an Arrow file's
    schema and its footer, which indexes every batch)."""
    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(EDGE))
        if st.st_size > 2 * EDGE:
            f.seek(st.st_size - EDGE)
        h.update(f.read(EDGE))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "edges": h.hexdigest()}


def check_stamp(path: str | os.PathLike, recorded: dict, sha256: str, what: str
                ) -> dict | None:
    """``path`` is the file ``recorded`` (a ``file_stamp``) and ``sha256`` describe, or a
    DataError that names it. Size and edges decide at once; where only the modification
    time differs (a copy, a restore), the whole file is hashed: then its new stamp is
    returned, for the caller to record (None: nothing to record)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} {path} is missing; restore it, or re-run "
                        "`rayfed-bpt data partition --overwrite`.")
    now = file_stamp(path)
    changed = now["size"] != recorded.get("size") or now["edges"] != recorded.get("edges")
    if not changed and now["mtime_ns"] == recorded.get("mtime_ns"):
        return None
    if changed or not sha256 or sha256_file(path) != sha256:
        raise DataError(f"{what} {path} changed since the partition's manifest recorded it "
                        f"(size {recorded.get('size')} -> {now['size']} bytes, or its "
                        "content). Restore it, or make the partition again (`rayfed-bpt data "
                        "partition --overwrite`); `rayfed-bpt data verify` checks every hash.")
    return now


def write_json(obj: dict, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


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
