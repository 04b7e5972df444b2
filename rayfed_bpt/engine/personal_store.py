"""Every client's personal state: in memory for small populations, spilled to disk for large.

A client's personal state (a local head, a kept Adam state) is touched only in
the rounds that sample it, yet a population of 10,000 clients at ~3.5 MB each is
35 GB: more than a driver should hold, and more than a checkpoint should rewrite
every round. The store keeps at most ``hot_bytes`` of states (or ``hot`` states) in
memory, the least recently used spilling first, and the rest as **pieces**: one safetensors file per
state, named by the SHA-256 of its bytes, so a piece is immutable, a damaged one is
detected when it is read, and a checkpoint is a manifest (client -> piece) beside
the global state (``engine.checkpoint``). A client never trained has no entry: its
state is the algorithm's initial one, made when asked for, so memory and disk grow
with the clients trained, not with the population.

Plain torch + safetensors, no Ray. Pieces are never unpickled.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from ..data.arrow_io import match_umask
from ..errors import RayfedError

State = dict  # name -> tensor

#: a piece: (sha256 hex of its bytes, its size in bytes)
Piece = tuple[str, int]

def resolve_hot(value: int | str, mb: float) -> tuple[int | None, int | None]:
    """(states, bytes) the store keeps in memory: ``runtime.personal_memory`` states, or
    auto: as many as fit in ``runtime.personal_memory_mb`` (the least recently used spill
    first). Bytes, not a count: a state is 3 MB with the built-in backbone and kept Adam
    moments, tens of MB at ViT-B width."""
    if value == "auto":
        return None, int(mb * 2**20)
    return int(value), None


def state_bytes(state: State) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def piece_path(folder: Path, sha: str) -> Path:
    """Where piece ``sha`` lies under ``folder``: fanned out by its first two hex digits,
    so no folder holds more than ~1/256 of 100,000 files."""
    return folder / sha[:2] / f"{sha}.safetensors"


def write_piece(folder: Path, state: State) -> Piece:
    """``state`` as a piece under ``folder`` (atomically; a piece already there is kept:
    same name, same bytes)."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous() for k, v in state.items()})
    sha = hashlib.sha256(data).hexdigest()
    path = piece_path(folder, sha)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".piece.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            match_umask(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return sha, len(data)


def read_piece(folder: Path, piece: Piece, client: int) -> State:
    """The state in ``piece``, its bytes checked against the name (never unpickled)."""
    from safetensors.torch import load

    sha, size = piece
    path = piece_path(folder, sha)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RayfedError(f"client {client}'s personal state {path} cannot be read ({e}); "
                          "restore the run folder from a backup or start a new run") from None
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
        raise RayfedError(f"client {client}'s personal state {path} is damaged (its bytes "
                          "do not match its SHA-256 name); restore the run folder from a "
                          "backup or start a new run")
    return load(data)


class PersonalStore(Mapping):
    """Client id -> personal state, for every client of the run (a ``Mapping``: pools index
    it per work unit, so a state is read from disk only when its unit is sent).

    ``hot``, ``hot_bytes``: states, and their bytes, kept in memory at most (least
    recently used go first; None: no bound). A state changed since the last ``flush`` is
    written as a piece before it leaves memory.
    ``folder``: where pieces live (a run's ``personal/``); unset until a checkpoint names
    one, a temporary folder if the store must spill before that."""

    def __init__(self, client_ids: Iterable[int], init: Callable[[int], State] | None = None,
                 hot: int | None = None, folder: str | Path | None = None,
                 pieces: dict[int, Piece] | None = None, hot_bytes: int | None = None):
        self.client_ids = list(client_ids)
        self._ids = frozenset(self.client_ids)
        self.init = init
        self.hot, self.hot_bytes = hot, hot_bytes
        self._bytes = 0  # of the states in memory
        self.folder = Path(folder) if folder is not None else None
        self.pieces: dict[int, Piece] = dict(pieces or {})  # clients whose state is on disk
        self._memory: OrderedDict[int, State] = OrderedDict()
        self._changed: set[int] = set()  # in memory, newer than its piece (if any)
        self._cleanup = None
        self.reads = self.writes = self.bytes_written = 0

    def bind(self, client_ids: Iterable[int], init: Callable[[int], State],
             hot: int | None, hot_bytes: int | None = None) -> None:
        """The run's clients, initial state and memory budget (a store read from a
        checkpoint has none of them until the engine adopts it)."""
        self.client_ids = list(client_ids)
        self._ids = frozenset(self.client_ids)
        self.init, self.hot, self.hot_bytes = init, hot, hot_bytes
        self._evict()

    # ----- the Mapping ----------------------------------------------------------------------
    def __getitem__(self, k: int) -> State:
        if k in self._memory:
            self._memory.move_to_end(k)
            return self._memory[k]
        if k in self.pieces:
            state = read_piece(self.folder, self.pieces[k], k)
            self.reads += 1
            self._memory[k] = state
            self._bytes += state_bytes(state)
            self._evict()
            return state
        if self.init is None:
            raise RayfedError(f"client {k}'s initial personal state is asked for before the "
                              "store was bound to an algorithm")
        return self.init(k)  # never trained: the initial state, not kept

    def __iter__(self) -> Iterator[int]:
        return iter(self.client_ids)

    def __len__(self) -> int:
        return len(self.client_ids)

    def __contains__(self, k: object) -> bool:
        return k in self._ids

    # ----- writing --------------------------------------------------------------------------
    def put(self, k: int, state: State) -> None:
        """Client ``k`` trained: ``state`` replaces its personal state. An empty state (an
        algorithm with nothing personal) is the initial one: nothing is kept."""
        old = self._memory.pop(k, None)
        self._bytes -= state_bytes(old) if old is not None else 0
        self._changed.discard(k)
        if not state:
            self.pieces.pop(k, None)
            return
        self._memory[k] = state
        self._bytes += state_bytes(state)
        self._changed.add(k)
        self._evict()

    def _evict(self) -> None:
        while (self.hot is not None and len(self._memory) > self.hot) or (
                self.hot_bytes is not None and self._bytes > self.hot_bytes
                and len(self._memory) > 1):
            k, state = self._memory.popitem(last=False)
            self._bytes -= state_bytes(state)
            if k in self._changed:
                self._write(k, state, self._spill_folder())
                self._changed.discard(k)

    def _write(self, k: int, state: State, folder: Path) -> None:
        self.pieces[k] = write_piece(folder, state)
        self.writes += 1
        self.bytes_written += self.pieces[k][1]

    def _spill_folder(self) -> Path:
        if self.folder is None:  # spilling before any checkpoint chose a folder
            self.folder = Path(tempfile.mkdtemp(prefix="rayfed-personal-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.folder), True)
        return self.folder

    def flush(self, folder: str | Path) -> dict[int, Piece]:
        """Every trained client's state as a piece under ``folder`` (only those changed since
        the last flush are written; pieces elsewhere are copied once); the manifest."""
        folder = Path(folder)
        if self.folder is not None and self.folder.resolve() != folder.resolve():
            for sha, _ in set(self.pieces.values()):  # a run moved (a temporary spill)
                dest = piece_path(folder, sha)
                if not dest.exists():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(piece_path(self.folder, sha), dest)
                    match_umask(dest)
        if self._cleanup is not None and self.folder != folder:
            self._cleanup()  # the temporary folder goes once its pieces are copied
            self._cleanup = None
        self.folder = folder
        for k in sorted(self._changed):
            self._write(k, self._memory[k], folder)
        self._changed.clear()
        return dict(self.pieces)

    def collect(self, keep: Iterable[str]) -> int:
        """Delete the pieces under this store's folder that neither it nor ``keep`` (the
        checkpoints' manifests) refers to, and leftovers of interrupted writes; the count."""
        if self.folder is None or not self.folder.exists():
            return 0
        live = {sha for sha, _ in self.pieces.values()} | set(keep)
        gone = 0
        for path in self.folder.glob("*/*"):
            name = path.name
            if name.startswith(".piece.") or (name.endswith(".safetensors")
                                              and name.split(".")[0] not in live):
                path.unlink(missing_ok=True)
                gone += 1
        return gone

    def subset(self, ids: Iterable[int]) -> Mapping[int, State]:
        """The same states, for ``ids`` only (an evaluation's sample), read when indexed."""
        return _Subset(self, list(ids))

    def memory_bytes(self) -> int:
        """Bytes of the states held in memory now."""
        return self._bytes

    def in_memory(self) -> int:
        return len(self._memory)


class _Subset(Mapping):
    def __init__(self, store: PersonalStore, ids: list[int]):
        self.store, self.ids, self._set = store, ids, frozenset(ids)

    def __getitem__(self, k: int) -> State:
        if k not in self._set:
            raise KeyError(k)
        return self.store[k]

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, k: object) -> bool:
        return k in self._set


def as_store(personal: Mapping[int, State] | PersonalStore) -> PersonalStore:
    """A store holding ``personal`` (a plain dict, e.g. an older checkpoint's), changed."""
    if isinstance(personal, PersonalStore):
        return personal
    store = PersonalStore(personal)
    for k, s in personal.items():
        store.put(k, s)
    return store
