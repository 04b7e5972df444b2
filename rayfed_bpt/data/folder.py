"""The image-folder source: ``root/<domain>/<class>/<image>`` (DomainNet, Office-Caltech-10,
Office-Home), listed and planned without opening an image.

Domains and classes are the sorted folder names (``classes`` keeps a subset, or a
named set such as FedBN's ten DomainNet classes). A domain's split comes from
DomainNet's own lists when ``root/<domain>_train.txt`` and ``<domain>_test.txt``
are there (``<domain>/<class>/<file> <label>`` a line); otherwise it is a seeded,
per-class ``test_fraction``. Anything in a class folder that is not an image is
skipped and reported, never silently dropped.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .digits4 import stratified_split
from .pixels import IMAGE_SUFFIXES, QUALITY
from .schema import DatasetInfo
from .stream import ImportPlan

#: named class sets for ``--classes``
CLASS_SETS = {
    # FedBN (Li et al., ICLR 2021) and the prompt-tuning FL papers after it: DomainNet's
    # ten most common classes
    "domainnet10": ("bird", "feather", "headphones", "ice_cream", "teapot", "tiger", "whale",
                    "windmill", "wine_glass", "zebra"),
}


def require_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{what} {path} does not exist; check --source.")
    if not path.is_dir():
        raise DataError(f"{what} {path} is not a folder; check --source.")


def _subfolders(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def chosen_classes(found: list[str], wanted: tuple[str, ...], root: Path) -> list[str]:
    """The classes to keep: all found, or ``wanted`` (names, or one named set)."""
    if len(wanted) == 1 and wanted[0] in CLASS_SETS:
        wanted = CLASS_SETS[wanted[0]]
    if not wanted:
        return found
    unknown = sorted(set(wanted) - set(found))
    if unknown:
        raise DataError(f"--classes names {unknown}, which {root} does not have (it has "
                        f"{len(found)} classes: {found[:8]}{' ...' if len(found) > 8 else ''}); "
                        f"named sets: {sorted(CLASS_SETS)}")
    return sorted(set(wanted))


def _split_lists(root: Path, domain: str) -> dict[str, str] | None:
    """DomainNet's ``<domain>_train.txt`` / ``_test.txt``: relative path -> split."""
    lists = {s: root / f"{domain}_{s}.txt" for s in ("train", "test")}
    if not all(p.exists() for p in lists.values()):
        return None
    out = {}
    for split, p in lists.items():
        for line in p.read_text().splitlines():
            if line.strip():
                out[line.split()[0]] = split
    return out


def _class_files(root: Path, dom: str, cls: str, listed: dict | None, skipped: list[dict],
                 stamp) -> list[str]:
    """One class folder's image files (relative to ``root``, sorted), each added to the
    import's ``stamp``; what is not an image, not in the split lists or unreadable is
    appended to ``skipped`` with the reason."""
    folder = root / dom / cls
    if not folder.is_dir():
        return []
    out = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        rel = f"{dom}/{cls}/{entry.name}"
        if entry.name.startswith("."):
            continue
        if entry.is_dir() or Path(entry.name).suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append({"file": rel, "reason": "not an image file (by its name)"})
            continue
        if listed is not None and rel not in listed:
            skipped.append({"file": rel, "reason": f"in neither {dom}_train.txt nor "
                                                  f"{dom}_test.txt"})
            continue
        try:
            st = entry.stat()
        except OSError as e:  # a broken link
            skipped.append({"file": rel, "reason": f"cannot be read ({e.strerror})"})
            continue
        stamp.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        out.append(rel)
    return out


def plan_image_folder(root: str | Path, size: int = 32, test_fraction: float = 0.2,
                      seed: int = 0, resize: str = "crop", pixels: str = "jpeg",
                      quality: int = QUALITY, classes: tuple[str, ...] = ()) -> ImportPlan:
    """Every image under ``root/<domain>/<class>/``, in sorted order, planned."""
    root = Path(root)
    require_dir(root, "image folder")
    domains = _subfolders(root)
    if not domains:
        raise DataError(
            f"image folder {root} has no domain folders; expected root/<domain>/<class>/*.jpg"
        )
    found = sorted({c for d in domains for c in _subfolders(root / d)})
    if not found:
        raise DataError(
            f"image folder {root} has no class folders under its domains {domains}; expected "
            "root/<domain>/<class>/*.jpg"
        )
    class_names = chosen_classes(found, classes, root)
    if len(class_names) < 2:
        raise DataError(f"image folder {root} holds one class ({class_names[0]}): a "
                        "classification data set needs two or more. Check --source (the "
                        "root above the domain folders) and --classes.")
    rng = np.random.default_rng(seed)
    files: list[str] = []  # relative to root
    labels, doms, splits, skipped = [], [], [], []
    stamp = hashlib.sha256()
    for d, dom in enumerate(domains):
        listed = _split_lists(root, dom)
        dom_files, dom_labels, dom_splits = [], [], []
        for c, cls in enumerate(class_names):
            for rel in _class_files(root, dom, cls, listed, skipped, stamp):
                dom_files.append(rel)
                dom_labels.append(c)
                if listed is not None:
                    dom_splits.append(listed[rel])
        if not dom_files:
            raise DataError(f"domain folder {root / dom} holds no images of the chosen classes "
                            f"({sorted(IMAGE_SUFFIXES)})")
        dom_labels = np.asarray(dom_labels)
        files += dom_files
        labels.append(dom_labels)
        doms.append(np.full(len(dom_labels), d))
        splits.append(np.asarray(dom_splits) if listed is not None
                      else stratified_split(dom_labels, test_fraction, rng))
    info = DatasetInfo(
        name=root.name,
        class_names=class_names,
        domain_names=domains,
        image_shape=(size, size, 3),
        source={"importer": "image_folder", "root": str(root.resolve()), "seed": seed,
                "test_fraction": test_fraction, "resize": resize,
                **({"quality": quality} if pixels == "jpeg" else {})},
        pixels=pixels,
    )

    def chunks(n: int):
        for i in range(0, len(files), n):
            yield [str(root / f) for f in files[i:i + n]]

    return ImportPlan(info, np.concatenate(labels), np.concatenate(doms),
                      np.concatenate(splits).astype(str), chunks, files.__getitem__,
                      stamp.hexdigest(), skipped=skipped, resize=resize, quality=quality)
