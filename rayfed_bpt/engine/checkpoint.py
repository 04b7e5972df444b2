"""Checkpoints: a run's whole state after a round, as safetensors files — never a pickle.

Run folders live on shared storage; whoever can write one must not get code run
as whoever resumes it, so a checkpoint is tensors plus JSON, nothing else. It is
incremental: ``checkpoint.safetensors`` holds the global state (tensors
``global/<key>``) and, in the header's metadata, the round, every round's
metrics, the MLflow run id, the config and a manifest of the clients' personal
states: client -> piece, an immutable file under ``personal/`` named by the
SHA-256 of its bytes (``engine.personal_store``). A round writes only the pieces
of the clients it changed; pieces no checkpoint refers to any more are deleted.
Format 1 (personal tensors inside the file) is still read.

``checkpoint.safetensors`` is the latest, ``checkpoint.prev.safetensors`` the one
before. A new checkpoint is written to a temporary file, read back and checked,
and only then takes the latest's place, so a crash at any moment leaves at least
one complete checkpoint; a truncated latest, or one whose pieces are missing or cut
short, falls back to the previous one. A piece's bytes are checked against its name
when it is read.

The reading side of ``checkpoint_round`` needs numpy only: the torch-free entry
process checks a ``--resume`` folder before Ray starts.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..data.arrow_io import match_umask
from ..errors import RayfedError
from ..run_folder import RunFolder
from .personal_store import PersonalStore, as_store, piece_path
from .state import RoundListener, RunState

LATEST, PREVIOUS, LEGACY = RunFolder.CHECKPOINT, RunFolder.PREVIOUS, RunFolder.LEGACY
FORMAT = "rayfed_bpt.checkpoint/2"
FORMAT_1 = "rayfed_bpt.checkpoint/1"  # personal tensors inside the file: read, not written


#: the errors of a device with no room left: no space, or the user's quota spent
FULL = (errno.ENOSPC, errno.EDQUOT)


#: the moments of a checkpoint's write a crash can fall between, in order (``at``)
WRITE_POINTS = ("pieces", "written", "previous", "latest", "collected")


def save_checkpoint(run_dir: str | Path, state: RunState, config: dict,
                    fill_after: float | None = None,
                    at: Callable[[str], None] | None = None) -> Path:
    """Write ``state`` as the latest checkpoint (the changed clients' pieces, then the
    global state and manifest); the last one becomes the previous; unreferenced pieces
    go. A device that fills up on the way stops the run with one message (what is
    free, what the checkpoint needs, the round whose checkpoint is intact, how to
    resume); nothing half-written is ever taken for a checkpoint. ``fill_after`` (a
    fault test's, ``runtime.faults`` ``disk_full@K``): the device takes only that share
    of the checkpoint file, then reports no space. ``at`` (a crash test's) is called at
    each of ``WRITE_POINTS`` as it is passed."""
    try:
        return _save(Path(run_dir), state, config, fill_after, at or (lambda point: None))
    except OSError as e:
        if e.errno not in FULL:
            raise
        raise disk_full(Path(run_dir), state, e) from None


def disk_full(run_dir: Path, state: RunState, error: OSError) -> RayfedError:
    """The message of a checkpoint the device had no room for."""
    need = sum(t.numel() * t.element_size() for t in state.global_state.values())
    need += as_store(state.personal).memory_bytes()
    try:
        free = f"{shutil.disk_usage(run_dir).free / 2**20:,.1f} MiB free"
    except OSError:
        free = "free space unknown"
    at = checkpoint_round(run_dir)
    kept = (f"the checkpoint of round {at} is intact: free space (or move the run folder) "
            f"and resume with `rayfed-bpt run --resume {run_dir}`" if at is not None else
            "no checkpoint was completed yet: free space and start the run again")
    return RayfedError(f"no space left on the device of {run_dir} ({error.strerror}) while "
                       f"writing round {state.round}'s checkpoint: {free}, the checkpoint "
                       f"needs up to {need / 2**20:,.1f} MiB; {kept}")


def _save(run_dir: Path, state: RunState, config: dict, fill_after: float | None,
          at: Callable[[str], None]) -> Path:
    from safetensors.torch import save

    run_dir.mkdir(parents=True, exist_ok=True)
    state.personal = store = as_store(state.personal)
    manifest = store.flush(run_dir / RunFolder.PERSONAL)
    at("pieces")
    tensors = {f"global/{k}": v.detach().contiguous().clone()
               for k, v in state.global_state.items()}
    meta = {"format": FORMAT, "round": state.round,
            "personal": {str(c): list(p) for c, p in sorted(manifest.items())},
            "history": state.history, "mlflow_run_id": state.mlflow_run_id, "config": config}
    data = save(tensors, metadata={"rayfed_bpt": json.dumps(meta)})
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint.", suffix=".tmp", dir=run_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            if fill_after is not None:  # an injected full device: part of it, then no room
                f.write(data[: int(len(data) * fill_after)])
                f.flush()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # on disk before it replaces anything
        match_umask(tmp)
        at("written")
        if not _reads_back(Path(tmp), state.round, tensors):
            raise RayfedError(f"checkpoint written to {tmp} does not read back")
        latest = run_dir / LATEST
        if _whole(latest) is not None:  # a damaged latest never displaces prev
            os.replace(latest, run_dir / PREVIOUS)
        at("previous")
        os.replace(tmp, latest)
        _fsync_dir(run_dir)  # the renames themselves on disk
        at("latest")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    previous = _whole(run_dir / PREVIOUS)
    store.collect(sha for sha, _ in _manifest(previous or {}).values())
    at("collected")
    return run_dir / LATEST


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _manifest(meta: dict) -> dict[int, tuple[str, int]]:
    return {int(c): (p[0], int(p[1])) for c, p in meta.get("personal", {}).items()}


def _pieces_missing(run_dir: Path, meta: dict) -> list[str]:
    """The pieces a checkpoint refers to that are not there in full (checked by size; the
    bytes are checked when a piece is read)."""
    folder = run_dir / RunFolder.PERSONAL
    missing = []
    for sha, size in set(_manifest(meta).values()):
        path = piece_path(folder, sha)
        try:
            ok = path.stat().st_size == size
        except OSError:
            ok = False
        if not ok:
            missing.append(str(path))
    return missing


def _reads_back(path: Path, round: int, tensors: dict) -> bool:
    """The written file holds this round and every tensor, bit for bit."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return (_read_meta(path)["round"] == round and set(f.keys()) == set(tensors)
                and all(f.get_tensor(k).equal(v) for k, v in tensors.items()))


def _whole(path: Path) -> dict | None:
    """The metadata of the checkpoint at ``path`` if it can be resumed from (readable, every
    piece it refers to there in full), else None."""
    try:
        meta = _read_meta(path) if path.exists() else None
    except RayfedError:
        return None
    return meta if meta is not None and not _pieces_missing(path.parent, meta) else None


def _read_meta(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            raw = (f.metadata() or {}).get("rayfed_bpt")
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: same advice
        raise RayfedError(f"{path} is not a readable rayfed_bpt checkpoint ({e}); it was not "
                          "loaded (checkpoints are safetensors files and are never "
                          "unpickled)") from None
    if raw is None:
        raise RayfedError(f"{path} is a safetensors file but not a rayfed_bpt checkpoint")
    meta = json.loads(raw)
    if meta.get("format") not in (FORMAT, FORMAT_1):
        raise RayfedError(f"{path} has checkpoint format {meta.get('format')!r}; this "
                          f"rayfed-bpt reads {FORMAT!r} and {FORMAT_1!r}")
    return meta


def _candidates(run_dir: Path) -> list[Path]:
    found = [p for p in (run_dir / LATEST, run_dir / PREVIOUS) if p.exists()]
    if not found and (run_dir / LEGACY).exists():
        raise RayfedError(f"{run_dir / LEGACY} is a checkpoint from an older rayfed-bpt: a "
                          "pickle, which is never loaded (unpickling a file can run code). "
                          "Start a new run.")
    return found


def _first_readable(run_dir: Path) -> tuple[Path, dict] | None:
    errors = []
    for path in _candidates(run_dir):
        try:
            meta = _read_meta(path)
        except RayfedError as e:
            errors.append(str(e))
            continue
        missing = _pieces_missing(run_dir, meta)
        if not missing:
            return path, meta
        errors.append(f"{path} refers to {len(missing)} personal state piece(s) that are "
                      f"missing or cut short (e.g. {missing[0]})")
    if errors:
        raise RayfedError(f"no readable checkpoint in {run_dir}: {'; '.join(errors)}. Start a "
                          "new run, or restore the folder from a backup.")
    return None


def checkpoint_round(run_dir: str | Path) -> int | None:
    """The round of the checkpoint a resume would start from (None: there is none)."""
    found = _first_readable(Path(run_dir))
    return None if found is None else int(found[1]["round"])


def load_checkpoint(run_dir: str | Path) -> tuple[RunState, dict] | None:
    """The latest readable checkpoint as (state, config), or None if there is none.
    Falls back to the previous checkpoint when the latest is truncated or corrupt
    (``safe_open`` checks that the file covers every tensor its header lists)."""
    from safetensors.torch import load_file

    found = _first_readable(Path(run_dir))
    if found is None:
        return None
    path, meta = found
    tensors = load_file(str(path))
    global_state = {}
    legacy: dict[int, dict] = {int(c): {} for c in meta.get("clients", ())}  # format 1
    for key, t in tensors.items():
        kind, rest = key.split("/", 1)
        if kind == "global":
            global_state[rest] = t
        else:
            c, name = rest.split("/", 1)
            legacy[int(c)][name] = t
    personal = PersonalStore(legacy, folder=Path(run_dir) / RunFolder.PERSONAL,
                             pieces=_manifest(meta))
    for c, s in legacy.items():
        personal.put(c, s)  # written as pieces by the next checkpoint
    state = RunState(int(meta["round"]), global_state, personal, meta["history"],
                     meta.get("mlflow_run_id"))
    return state, meta["config"]


class CheckpointWriter(RoundListener):
    """Writes a checkpoint after every ``checkpoint_every`` rounds and the last one."""

    timing = "checkpoint_seconds"

    def __init__(self, run_dir: str | Path, config: dict, every: int, rounds: int,
                 full_at: Callable[[int], bool] | None = None):
        self.run_dir, self.config, self.every, self.rounds = Path(run_dir), config, every, rounds
        self.full_at = full_at  # a fault test's: the device fills during round r's checkpoint
        # a writer killed mid-write (a hard crash) leaves its temporary file: one writer
        # per run folder at a time, so whatever is there now is such a leftover
        for leftover in self.run_dir.glob(".checkpoint.*.tmp"):
            leftover.unlink(missing_ok=True)

    def on_round(self, state: RunState, metrics: dict) -> None:
        if state.round % self.every == 0 or state.round == self.rounds:
            full = self.full_at is not None and self.full_at(state.round)
            save_checkpoint(self.run_dir, state, self.config, 0.5 if full else None)
