"""Reading images in place: a dataset's image column over all its record batches, and
the rows of it one client's split holds.

Nothing here copies a whole split, file or column: raw pixels are zero-copy views of
each memory-mapped record batch, encoded pixels are decoded row by row, and a
selection of rows (a validation carve, a subsample) is another index array over the
same column. Pixels are read only by ``take``, per batch of examples.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .pixels import decode_jpeg
from .schema import DatasetInfo

_POOLS: dict[int, ThreadPoolExecutor] = {}


def decode_pool(threads: int) -> ThreadPoolExecutor:
    """This process's decoding threads (one pool per size, shared by every column)."""
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="decode")
    return _POOLS[threads]


class ImageColumn:
    """The image column of a memory-mapped table, chunk-aware. ``threads``: how many
    threads decode encoded pixels (the client actor's own CPUs)."""

    def __init__(self, column: pa.ChunkedArray, info: DatasetInfo, threads: int = 1):
        self.info = info
        self.threads = threads
        chunks = [c for c in column.chunks if len(c)]
        self._starts = np.cumsum([0, *(len(c) for c in chunks)])
        if info.pixels == "jpeg":
            self._encoded = [_binary_parts(c) for c in chunks]
        else:
            self._views = [c.to_numpy_ndarray() for c in chunks]  # zero-copy

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows outside [0, {len(self)}) of an image column")
        chunk = np.searchsorted(self._starts, rows, side="right") - 1
        return chunk, rows - self._starts[chunk]

    def take(self, rows) -> np.ndarray:
        """(n, H, W, C) uint8 pixels of ``rows`` (a new array)."""
        chunk, local = self._locate(rows)
        if self.info.pixels == "raw" and len(self._views) == 1:
            return self._views[0][local]
        out = np.empty((len(local), *self.info.image_shape), np.uint8)
        if self.info.pixels == "raw":
            for c in np.unique(chunk):
                here = chunk == c
                out[here] = self._views[c][local[here]]
            return out
        blobs = [self._blob(c, r) for c, r in zip(chunk.tolist(), local.tolist())]
        if self.threads > 1 and len(blobs) > 1:
            decoded = decode_pool(self.threads).map(decode_jpeg, blobs)
        else:
            decoded = map(decode_jpeg, blobs)
        for i, image in enumerate(decoded):
            out[i] = image
        return out

    def encoded(self, rows) -> list[memoryview]:
        """The stored bytes of ``rows`` (jpeg pixels): for a decoder elsewhere (a GPU)."""
        chunk, local = self._locate(rows)
        return [self._blob(c, r) for c, r in zip(chunk.tolist(), local.tolist())]

    def _blob(self, chunk: int, row: int) -> memoryview:
        offsets, data = self._encoded[chunk]
        return data[offsets[row]:offsets[row + 1]]


def _binary_parts(chunk: pa.Array) -> tuple[np.ndarray, memoryview]:
    """A binary array's value offsets and data, as views of its buffers."""
    _, offsets, data = chunk.buffers()
    off = np.frombuffer(offsets, np.int32)[chunk.offset: chunk.offset + len(chunk) + 1]
    return off, memoryview(data)


@dataclass(frozen=True)
class ImageRows:
    """Some rows of an image column, in order: one client's split. ``select`` makes
    another view of the same column; only ``take`` and ``read`` read pixels."""

    column: ImageColumn
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.column.info.image_shape)

    def select(self, idx) -> ImageRows:
        return ImageRows(self.column, self.rows[np.asarray(idx, dtype=np.int64)])

    def take(self, idx) -> np.ndarray:
        """Pixels of the examples ``idx`` (positions in these rows), (n, H, W, C) uint8."""
        return self.column.take(self.rows[np.asarray(idx, dtype=np.int64)])

    def read(self) -> np.ndarray:
        """Every row's pixels: a copy in memory (small selections only)."""
        return self.column.take(self.rows)
