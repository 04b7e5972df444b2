"""Turn a source into a saved dataset file; build the built-in set on first use."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError, DataError
from .dataset import default_data_root, save_dataset
from .digits4 import build_digits4
from .importers import SOURCES, import_cifar, import_image_folder, import_table_source


def builtin_dataset_path(root: str | Path | None = None, extra_domains: Sequence[str] = ()) -> Path:
    root = Path(root) if root else default_data_root()
    name = "digits4" + "".join(f"+{d}" for d in extra_domains)
    return root / "datasets" / f"{name}.arrow"


def prepare(
    source: str = "digits4",
    path: str | Path | None = None,
    out: str | Path | None = None,
    size: int = 32,
    extra_domains: Sequence[str] = (),
    seed: int = 0,
    test_fraction: float = 0.2,
    overwrite: bool = False,
) -> Path:
    """Import ``source`` (read from ``path``) into the Arrow dataset file ``out``."""
    if source not in SOURCES:
        raise ConfigError(f"unknown source {source!r}; allowed: {list(SOURCES)}")
    if source != "digits4" and path is None:
        raise ConfigError(f"source {source!r} needs --source PATH (the files to import)")
    if extra_domains and source != "digits4":
        raise ConfigError("--extra-domains applies to the built-in digits4 source only")
    if source == "digits4":
        out = Path(out) if out else builtin_dataset_path(None, extra_domains)
    elif out is None:
        out = default_data_root() / "datasets" / f"{Path(path).stem or source}.arrow"
    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{out} already exists. Pass --overwrite to rebuild it.")
    if source == "digits4":
        table, info = build_digits4(
            seed=seed, test_fraction=test_fraction, extra_domains=extra_domains
        )
    elif source == "image_folder":
        table, info = import_image_folder(path, size=size, test_fraction=test_fraction, seed=seed)
    elif source in ("cifar10", "cifar100"):
        table, info = import_cifar(path, source)
    else:
        table, info = import_table_source(path, size=size, test_fraction=test_fraction, seed=seed)
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
    return Path(name)
