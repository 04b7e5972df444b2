"""Streaming imports: an importer's plan decoded on every core, written batch by batch.

An importer that reads many image files returns an ``ImportPlan``: the dataset's info
and, per example, its label, domain and split, with the images not yet opened. Here
the plan is cut into chunks of ``CHUNK_ROWS`` examples; a worker (an ``Executor``: a
local process pool, or Ray tasks on every node of a cluster,
``runtime/import_tasks.py``) opens, fits and encodes a chunk's images and writes
them, with their labels, as a part file under ``.<name>.parts/`` beside the output.
Only the list of unreadable files travels back, and at most twice as many chunks as
workers are in flight, so memory stays flat however many images there are. A
finished part gets a small JSON beside it; a killed import started again with the
same source and options keeps those parts. At the end the parts become one dataset
file in record batches of ``rows_per_batch`` (in chunk order: the same bytes as an
import never interrupted), hashed as it is written, and the sidecar lists every
file that was skipped, and why.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import DataError
from .arrow_io import atomic_path, stale_tmp_files, write_json, write_table
from .dataset import write_sidecar
from .pixels import QUALITY, prepare_chunk
from .schema import SCHEMA_VERSION, DatasetInfo, arrow_schema, make_batch, rows_per_batch


@dataclass
class ImportPlan:
    """What an importer found before decoding anything. ``chunks(n)`` yields the
    examples' image sources (paths, or bytes), ``n`` at a time, in row order;
    ``name(i)`` says which file example ``i`` is (for the skipped list)."""

    info: DatasetInfo
    labels: np.ndarray
    domains: np.ndarray
    splits: np.ndarray
    chunks: Callable[[int], Iterator[list]]
    name: Callable[[int], str]
    fingerprint: str  # the source's files (names, sizes, times): a resume checks it
    groups: np.ndarray | None = None
    skipped: list[dict] = field(default_factory=list)  # found while listing (stray files)
    resize: str = "crop"
    quality: int = QUALITY

    def __len__(self) -> int:
        return len(self.labels)


#: images a worker decodes at a time (one part file); the dataset's record batches
#: are cut again, to ``rows_per_batch``, when the parts are joined
CHUNK_ROWS = 128
#: hooks called with the index of each part just written (tests stop an import there)
after_part: list[Callable[[int], None]] = []


def parts_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.parts"


def signature(plan: ImportPlan, rows: int) -> str:
    """Everything a part's bytes depend on: finished parts are kept only if it matches."""
    h = hashlib.sha256(json.dumps({
        "info": plan.info.to_json(), "fingerprint": plan.fingerprint, "rows": rows,
        "resize": plan.resize, "quality": plan.quality, "n": len(plan),
        "schema": SCHEMA_VERSION}, sort_keys=True).encode())
    for a in (plan.labels, plan.domains, plan.splits.astype("U5"), plan.groups):
        if a is not None:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


class Progress:
    """A bar on a terminal; elsewhere (job logs, CI) one line each ``every`` images with
    the rate and the time left."""

    def __init__(self, total: int, done: int, show: bool | None = None):
        self.total, self.done, self.skipped = total, done, 0
        self.start, self.first = time.perf_counter(), done
        tty = sys.stderr.isatty() if show is None else show
        self.every = max(1, total // 20)
        self.next_line = done + self.every
        self.bar = None
        if tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="img", desc="import", file=sys.stderr)
        elif done:
            print(f"import: resuming, {done:,} of {total:,} images already done", flush=True)

    def update(self, n: int, skipped: int) -> None:
        self.done += n
        self.skipped += skipped
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(skipped=self.skipped, refresh=False)
        elif self.done >= self.next_line or self.done == self.total:
            self.next_line = self.done + self.every
            print(self.line(), flush=True)

    def rate(self) -> float:
        return (self.done - self.first) / max(1e-9, time.perf_counter() - self.start)

    def line(self) -> str:
        rate = self.rate()
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        eta = time.strftime("%H:%M:%S", time.gmtime(left))
        return (f"import: {self.done:,}/{self.total:,} images  {rate:,.0f}/s  ETA {eta}"
                f"  ({self.skipped} skipped)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def local_executor(workers: int | None = None) -> Executor:
    """A process per core (``workers``), forked: a worker needs nothing but the decoder,
    and a script that calls ``prepare`` without a ``__main__`` guard works as it is
    (spawned workers would re-run it). Measured here: 1.76x one process on 2 cores,
    threads 1.64x (PIL releases the GIL, but not around its Python parts)."""
    return ProcessPoolExecutor(workers or os.cpu_count() or 1, mp_context=get_context("fork"),
                               initializer=_die_with_parent, initargs=(os.getpid(),))


def _die_with_parent(parent: int) -> None:
    """A worker ends when its import is killed (SIGKILL included), not idles forever:
    Linux's parent-death signal."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: the pool's own shutdown is all there is
    if os.getppid() != parent:  # it died before the signal was set
        os._exit(1)


def write_import(plan: ImportPlan, out: Path, executor: Executor | None = None,
                 workers: int | None = None, strict: bool = False, show: bool | None = None
                 ) -> Path:
    """Decode ``plan`` with ``executor`` (default: ``workers`` processes, one per core)
    into the dataset file ``out``, resuming finished parts; bad files are skipped and
    reported, or with ``strict`` refused. Twice ``workers`` chunks are in flight."""
    if strict and plan.skipped:
        raise DataError(_refusal(plan.skipped))
    for stale in stale_tmp_files(out):  # a dataset file a killed join left half-written
        stale.unlink(missing_ok=True)
    rows = min(CHUNK_ROWS, rows_per_batch(plan.info))
    n_parts = math.ceil(len(plan) / rows)
    folder = _open_parts(parts_dir(out), signature(plan, rows))
    done = {i for i in range(n_parts) if (folder / f"part_{i:06d}.json").exists()}
    done_rows = sum(min(rows, len(plan) - i * rows) for i in done)
    progress = Progress(len(plan), done_rows, show)
    workers = workers or os.cpu_count() or 1
    own = executor is None
    executor = executor or local_executor(workers)
    pending: dict[Future, int] = {}
    try:
        yielded = 0
        for i, items in enumerate(plan.chunks(rows)):
            yielded += 1
            first = i * rows
            if len(items) != min(rows, len(plan) - first):
                raise DataError(f"the importer's chunk {i} holds {len(items)} images; rows "
                                f"{first}.. of its {len(plan)} need {min(rows, len(plan) - first)}"
                                " (ImportPlan.chunks(n) yields exactly n at a time)")
            if i in done:
                continue
            keep = slice(first, first + len(items))
            columns = {"ids": np.arange(first, first + len(items)), "labels": plan.labels[keep],
                       "domains": plan.domains[keep], "splits": plan.splits[keep],
                       "groups": None if plan.groups is None else plan.groups[keep]}
            pending[executor.submit(write_part, items, columns, plan.info.to_json(),
                                    plan.resize, plan.quality, str(_part(folder, i)))] = i
            if len(pending) >= 2 * workers:
                _finish(wait(pending, return_when=FIRST_COMPLETED).done, pending, plan, folder,
                        rows, progress, strict)
        while pending:
            _finish(wait(pending, return_when=FIRST_COMPLETED).done, pending, plan, folder,
                    rows, progress, strict)
        if yielded != n_parts:
            raise DataError(f"the importer yielded {yielded} chunks for {len(plan)} images; "
                            f"{n_parts} were due (ImportPlan.chunks(n))")
    except BrokenProcessPool:
        raise DataError("a decoding worker died (out of memory? killed?); the parts finished "
                        "so far are kept: run the same command again to resume") from None
    finally:
        for f in pending:
            f.cancel()
        if own:
            executor.shutdown(cancel_futures=True)
        progress.close()
    return _assemble(plan, out, folder, n_parts, progress, strict)


def _open_parts(folder: Path, sig: str) -> Path:
    """The parts folder of this very import (kept), or a new one (another import's
    leftovers removed)."""
    marker = folder / "signature"
    if folder.exists() and not (marker.exists() and marker.read_text() == sig):
        shutil.rmtree(folder)
    if not folder.exists():
        folder.mkdir(parents=True)
        marker.write_text(sig)
    return folder


def _part(folder: Path, i: int) -> Path:
    return folder / f"part_{i:06d}.arrow"


def write_part(items: list, columns: dict, info: dict, resize: str, quality: int,
               path: str) -> list[tuple[int, str]]:
    """A worker's whole share of an import: one chunk's images opened, fitted and stored,
    written with their labels as the part file ``path``; returns (position, reason) of
    each unreadable item. Only that travels back: no pixels cross processes or nodes."""
    meta = DatasetInfo.from_json(info)
    images, bad = prepare_chunk(items, meta.image_shape[0], resize, meta.pixels, quality)
    if not images and meta.pixels == "raw":  # the whole chunk unreadable
        images = np.zeros((0, *meta.image_shape), np.uint8)
    keep = np.setdiff1d(np.arange(len(items)), [j for j, _ in bad])
    groups = columns["groups"]
    batch = make_batch(meta, images, columns["labels"][keep], columns["domains"][keep],
                       columns["splits"][keep], columns["ids"][keep],
                       None if groups is None else groups[keep])
    write_table(pa.Table.from_batches([batch], batch.schema), path, digest=False)
    return bad


def _finish(futures, pending: dict[Future, int], plan: ImportPlan, folder: Path, rows: int,
            progress: Progress, strict: bool) -> None:
    """Record each finished part (its JSON marks it done): its rows and skipped files."""
    for f in futures:
        i = pending.pop(f)
        bad = f.result()
        first = i * rows
        count = min(rows, len(plan) - first)
        skipped = [{"file": plan.name(first + j), "reason": why} for j, why in bad]
        if strict and skipped:
            raise DataError(_refusal(skipped))
        write_json({"rows": count - len(bad), "skipped": skipped},
                   folder / f"part_{i:06d}.json")
        progress.update(count, len(skipped))
        for hook in after_part:
            hook(i)


class HashingFile:
    """A file written once, front to back, hashed as it goes (no second read of a
    dataset that may be tens of GB)."""

    def __init__(self, path: Path):
        self._file = open(path, "wb")  # noqa: SIM115 - closed by the Arrow sink
        self.sha256 = hashlib.sha256()
        self.closed = False

    def write(self, data) -> int:
        self.sha256.update(data)
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()

    def tell(self) -> int:
        return self._file.tell()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        self._file.close()
        self.closed = True


def _refusal(skipped: list[dict]) -> str:
    shown = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:5])
    more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
    return (f"--strict: {len(skipped)} file(s) are no readable images: {shown}{more}. Remove "
            "or replace them, or import without --strict (they are then skipped and listed "
            "in the dataset's .json).")


def _part_batches(folder: Path, n_parts: int) -> Iterator[pa.RecordBatch]:
    """Every part's rows, in order, a batch at a time (read, not mapped: the memory stays
    one part's)."""
    for i in range(n_parts):
        with pa.OSFile(str(_part(folder, i))) as f:
            reader = pa.ipc.open_file(f)
            for b in range(reader.num_record_batches):
                yield reader.get_batch(b)


def rebatch(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """The same rows in record batches of exactly ``rows`` (the last one shorter)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows).combine_chunks().to_batches()[0]
            pending, count = table.slice(rows).to_batches(), count - rows
    if count:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def _assemble(plan: ImportPlan, out: Path, folder: Path, n_parts: int, progress: Progress,
              strict: bool) -> Path:
    """The parts, in order, as one dataset file in record batches of ``rows_per_batch``,
    its sidecar, and the parts folder removed."""
    skipped = list(plan.skipped)
    for i in range(n_parts):
        skipped += json.loads((folder / f"part_{i:06d}.json").read_text())["skipped"]
    if strict and skipped:  # parts of an earlier import without --strict included
        raise DataError(_refusal(skipped))
    counts = {"train": 0, "test": 0}
    with atomic_path(out) as tmp:
        hashed = HashingFile(tmp)
        with pa.PythonFile(hashed, mode="w") as sink, \
                pa.ipc.new_file(sink, arrow_schema(plan.info)) as writer:
            for batch in rebatch(_part_batches(folder, n_parts), rows_per_batch(plan.info)):
                writer.write_batch(batch)
                for s, n in zip(*np.unique(batch.column("split").to_numpy(
                        zero_copy_only=False), return_counts=True)):
                    counts[str(s)] += int(n)
        if sum(counts.values()) == 0:
            shutil.rmtree(folder, ignore_errors=True)  # nothing there to resume
            raise DataError(f"none of the {len(plan)} images could be read (first: "
                            f"{skipped[0]['file']}: {skipped[0]['reason']}); nothing written.")
        digest = hashed.sha256.hexdigest()
    write_sidecar(out, plan.info, digest, counts, skipped=skipped,
                  import_seconds=round(time.perf_counter() - progress.start, 1),
                  images_per_second=round(progress.rate(), 1))
    shutil.rmtree(folder, ignore_errors=True)
    return out
