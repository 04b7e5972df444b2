"""The ``rayfed-bpt data`` commands: prepare, partition, verify and show datasets.
Thin, like the rest of the CLI: each parses its arguments and calls ``rayfed_bpt.data``."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from .cli_parser import (
    address_arg,
    arg,
    command,
    import_arg,
    no_ray_stats,
    schema_options,
    with_args,
)
from .config import PartitionConfig  # torch-free: the schema only
from .errors import RayfedError


@command("data prepare", help="import a source into an Arrow dataset file",
         description="Import a source into one Arrow dataset file. The built-in digits4 set "
         "needs no files and builds in seconds. Image folders and Parquet/HF sources are "
         "decoded on every core (--ray: on every node of a Ray cluster) in bounded memory, "
         "with progress; a killed import run again resumes; unreadable files are skipped "
         "and listed in the dataset's .json (--strict refuses them). docs/data.md.")
@arg("source_type", nargs="?", default="digits4",
     help="what to import: digits4 (the default, the built-in benchmark), image_folder, "
     "cifar10, cifar100, parquet, hf, or a plugin's importer (rayfed-bpt list importers)")
@with_args(import_arg)
@arg("--source", help="the files to import (folder or file); not for digits4")
@arg("--out", help="dataset file to write (default: under the data root)")
@arg("--size", type=int, default=32, help="image side after resizing (224 for a ViT-B/16)")
@arg("--pixels", default="jpeg", choices=("jpeg", "raw"),
     help="image folders, Parquet/HF: store JPEG re-encoded at --size (default; about a "
     "tenth of raw at 224 px, decoded per batch where it is used) or raw pixels")
@arg("--resize", default="crop", choices=("crop", "squash"),
     help="crop (default): short side to --size, then a centre crop (timm's evaluation "
     "transform with crop_pct 1); squash: both sides to --size, aspect ratio lost")
@arg("--quality", type=int, default=90, help="JPEG quality of stored images (--pixels jpeg)")
@arg("--classes", help="keep only these classes: a comma list, or a named set "
     "(domainnet10: FedBN's ten DomainNet classes)")
@arg("--group-column", help="parquet/hf: the column of natural groups (a writer or user id) "
     "for the natural partitioner")
@arg("--strict", action="store_true", help="refuse the import if any file is no readable "
     "image (default: skip it and list it)")
@arg("--workers", type=int, help="local decoding processes (default: one per core)")
@arg("--ray", action="store_true", help="decode as Ray tasks on the cluster at --address / "
     "$RAY_ADDRESS (or a local Ray); the source must be at the same path on every node")
@address_arg
@arg("--extra-domains", help="digits4 only: comma list of rotate,colour,noise,invert")
@arg("--seed", type=int, default=0)
@arg("--test-fraction", type=float, default=0.2,
     help="held-out test share per domain when the source has no split")
@arg("--overwrite", action="store_true", help="replace an existing file")
def cmd_data_prepare(args: argparse.Namespace) -> None:
    from .data import load_dataset, prepare
    from .plugins import import_plugins

    import_plugins(args.imports)
    t = time.perf_counter()
    executor = workers = None
    if args.ray:
        no_ray_stats()
        from .runtime.import_tasks import RayExecutor

        executor = RayExecutor(args.address)
        workers = executor.workers
    try:
        out = prepare(args.source_type, path=args.source, out=args.out,
                      overwrite=args.overwrite, strict=args.strict,
                      workers=workers or args.workers, executor=executor, size=args.size,
                      extra_domains=[d for d in (args.extra_domains or "").split(",") if d],
                      seed=args.seed, test_fraction=args.test_fraction, pixels=args.pixels,
                      resize=args.resize, quality=args.quality,
                      classes=[c for c in (args.classes or "").split(",") if c],
                      group_column=args.group_column)
    finally:
        if executor is not None:
            executor.shutdown()
    ds = load_dataset(out, verify=False)
    skipped = ds.sidecar.get("skipped", [])
    print(f"wrote {out} ({len(ds):,} examples, {ds.info.num_classes} classes, domains "
          f"{ds.info.domain_names}, {out.stat().st_size / 2**20:,.1f} MiB, pixels "
          f"{ds.info.pixels}) in {time.perf_counter() - t:.1f}s"
          + (f"; {len(skipped)} file(s) skipped, listed in {out.with_suffix('.json')}"
             if skipped else ""))


@command("data partition", help="split a dataset among clients",
         description="Split a dataset among clients: manifest.json plus each client's row "
         "numbers into the one dataset (kilobytes; or copies of the rows: --layout files / "
         "packed). Deterministic given dataset, options and seed. The options are the data.* "
         "keys of a run's config (rayfed-bpt config --reference).")
@arg("--dataset", help="dataset .arrow file, or a built-in name: digits4 (the default) or "
     "digits4+rotate+invert+... (with extra domains), built if missing")
@schema_options(PartitionConfig)
@arg("--out", help="output folder (default: <data root>/partitions/<name>)")
@arg("--overwrite", action="store_true", help="replace an existing folder")
@arg("--layout", default="auto", choices=("auto", "indices", "files", "packed"),
     help="indices (auto, the default): each client's row numbers into the dataset; files: "
     "a copy of each client's rows in its own Arrow file; packed: copies, many clients a "
     "file (a partition that travels without its dataset)")
@with_args(import_arg)
def cmd_data_partition(args: argparse.Namespace) -> None:
    from .data import PartitionReader, dataset_path, load_dataset, write_partition
    from .data.recipe import partition_folder
    from .plugins import import_plugins

    import_plugins(args.imports)

    cfg = PartitionConfig(**{f.name: getattr(args, f.name)
                             for f in dataclasses.fields(PartitionConfig)}).recipe(0)
    source = dataset_path(args.dataset)
    t = time.perf_counter()
    ds = load_dataset(source)
    out = Path(args.out) if args.out else partition_folder(source, cfg)
    write_partition(ds, cfg, out, overwrite=args.overwrite, layout=args.layout)
    held = PartitionReader(out, verify=False)
    extra = len(held.new_clients) + len(held.ood_clients)
    print(f"{held.num_clients} clients' rows and manifest.json are in {out} "
          f"({time.perf_counter() - t:.1f}s)" + (f"; {extra} of them held out of training "
                                                 "(`rayfed-bpt data show` marks them)"
                                                 if extra else ""))


@command("data verify", help="hash every byte of a partition or dataset",
         description="Check a partition folder (its dataset, rows or shard files, and each "
         "client's rows) or a dataset .arrow file against the sha256 recorded when it was "
         "written. A run start checks only stamps (size, time, first and last MiB).")
@arg("path", help="a partition folder (with manifest.json) or a dataset .arrow file")
def cmd_data_verify(args: argparse.Namespace) -> None:
    from .data import PartitionReader, load_dataset

    t = time.perf_counter()
    path = Path(args.path)
    if path.is_dir():
        reader = PartitionReader(path)
        reader.verify_all()
        what = f"partition {path} ({reader.num_clients} clients, layout {reader.layout})"
    else:
        ds = load_dataset(path, verify=True)
        if not ds.sha256:
            raise RayfedError(f"{path} has no sidecar .json with its sha256: nothing to check "
                              "it against")
        what = f"dataset {path} ({len(ds):,} examples)"
    print(f"{what}: every hash matches ({time.perf_counter() - t:.1f}s)")


@command("data show", help="print per-client counts and plot them",
         description="Print per-client counts and write a PNG of the label x client and "
         "domain x client mixes.")
@arg("partition", nargs="?", help="partition folder with manifest.json (default: the one the "
     "default `rayfed-bpt run` uses)")
@arg("--png", help="where to write the plot (default: <partition>/partition.png)")
@arg("--max-rows", type=int, default=50)
def cmd_data_show(args: argparse.Namespace) -> None:
    from .config import ExperimentConfig
    from .data import PartitionReader
    from .data.recipe import resolve_partition
    from .data.show import plot_partition, summary_table

    # no argument: the partition the default `rayfed-bpt run` uses (made if missing)
    cfg = ExperimentConfig()
    partition = Path(args.partition) if args.partition else resolve_partition(cfg.data, cfg.seed)
    reader = PartitionReader(partition, verify=False)
    print(summary_table(reader, max_rows=args.max_rows))
    png = plot_partition(reader, args.png or partition / "partition.png")
    print(f"wrote {png}")
