"""Turn a source into a saved dataset file; build the built-in set on first use."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import fields
from pathlib import Path

from ..errors import ConfigError, DataError
from .dataset import default_data_root, save_dataset
from .importers import ImportRequest, importer
from .stream import ImportPlan, write_import


def builtin_dataset_path(root: str | Path | None = None, extra_domains: Sequence[str] = ()) -> Path:
    root = Path(root) if root else default_data_root()
    name = "digits4" + "".join(f"+{d}" for d in extra_domains)
    return root / "datasets" / f"{name}.arrow"


def prepare(
    source: str = "digits4",
    path: str | Path | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    strict: bool = False,
    workers: int | None = None,
    executor: Executor | None = None,
    show: bool | None = None,
    **request,
) -> Path:
    """Import ``source`` (read from ``path``) into the Arrow dataset file ``out``, with
    the importer registered under that name; ``request``: the ``ImportRequest`` fields
    (size, pixels, resize, classes, ...). A streamed source is decoded by ``executor``
    (default: ``workers`` local processes), resuming a killed import of the same
    source and options; its unreadable files are skipped and listed in the sidecar,
    or with ``strict`` refused."""
    read, needs_path = importer(source)
    if needs_path and path is None:
        raise ConfigError(f"source {source!r} needs --source PATH (the files to import)")
    unknown = set(request) - ({f.name for f in fields(ImportRequest)} - {"path"})
    if unknown:
        raise ConfigError(f"prepare() got unknown import options {sorted(unknown)}")
    extra_domains = tuple(request.pop("extra_domains", ()))
    if extra_domains and source != "digits4":
        raise ConfigError("--extra-domains applies to the built-in digits4 source only")
    if source == "digits4":
        out = Path(out) if out else builtin_dataset_path(None, extra_domains)
    elif out is None:
        name = (Path(path).stem if path is not None else "") or source
        out = default_data_root() / "datasets" / f"{name}.arrow"
    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{out} already exists. Pass --overwrite to rebuild it.")
    if "classes" in request:
        request["classes"] = tuple(request["classes"])
    found = read(ImportRequest(Path(path) if path is not None else None,
                               extra_domains=extra_domains, **request))
    if isinstance(found, ImportPlan):
        return write_import(found, out, executor, workers, strict, show)
    table, info = found
    return save_dataset(table, info, out)


def ensure_builtin(root: str | Path | None = None, extra_domains: Sequence[str] = ()) -> Path:
    """The built-in dataset's path, building it first if it is not there."""
    path = builtin_dataset_path(root, extra_domains)
    if not path.exists():
        prepare("digits4", out=path, extra_domains=extra_domains)
    return path


def dataset_path(spec: str | Path | None) -> Path:
    """What a ``dataset`` setting names: unset or a built-in name (``digits4``, or
    ``digits4+rotate+invert``: with extra domains) is the built-in set, made on first
    use; anything else is the path of an .arrow file."""
    name = str(spec or "digits4")
    base, *extra = name.split("+")
    if base == "digits4" and not name.endswith(".arrow"):
        return ensure_builtin(extra_domains=tuple(extra))
    return Path(name).expanduser()
