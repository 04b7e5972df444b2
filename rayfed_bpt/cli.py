"""The ``rayfed-bpt`` command. Thin: it parses arguments and calls the library."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import ConfigError, RayfedError


def cmd_data_prepare(args: argparse.Namespace) -> None:
    from .data import prepare

    t = time.perf_counter()
    extra = [d for d in (args.extra_domains or "").split(",") if d]
    out = prepare(
        args.source_type,
        path=args.source,
        out=args.out,
        size=args.size,
        extra_domains=extra,
        seed=args.seed,
        test_fraction=args.test_fraction,
        overwrite=args.overwrite,
    )
    from .data import load_dataset

    ds = load_dataset(out)
    print(
        f"wrote {out} ({len(ds)} examples, {ds.info.num_classes} classes, domains "
        f"{ds.info.domain_names}) in {time.perf_counter() - t:.1f}s"
    )


def cmd_data_partition(args: argparse.Namespace) -> None:
    from .data import PartitionConfig, ensure_builtin, load_dataset, write_partition
    from .data.recipe import partition_folder

    cfg = PartitionConfig(
        partitioner=args.partitioner,
        num_clients=args.num_clients,
        seed=args.seed,
        alpha=args.alpha,
        beta=args.beta,
        label_alpha=args.label_alpha,
        k=args.k,
        min_samples=args.min_samples,
        max_draws=args.max_draws,
    )
    dataset_path = Path(args.dataset) if args.dataset else ensure_builtin()
    t = time.perf_counter()
    ds = load_dataset(dataset_path)
    out = Path(args.out) if args.out else partition_folder(dataset_path, cfg)
    write_partition(ds, cfg, out, overwrite=args.overwrite)
    print(
        f"{cfg.num_clients} client shards and manifest.json are in {out} "
        f"({time.perf_counter() - t:.1f}s)"
    )


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


def cmd_backbone_pretrain(args: argparse.Namespace) -> None:
    from .models.backbone import BUILTIN_WEIGHTS
    from .models.pretrain import pretrain_backbone

    r = pretrain_backbone(
        out=args.out or BUILTIN_WEIGHTS,
        num_images=args.num_images,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
    )
    print(
        f"wrote {r['path']} ({r['params']} parameters, glyph val acc {r['val_acc']:.3f}, "
        f"{r['seconds']:.0f}s)"
    )


def cmd_backbone_probe(args: argparse.Namespace) -> None:
    import torch

    from .data import ensure_builtin, load_dataset
    from .models import create_backbone
    from .models.pretrain import linear_probe

    torch.manual_seed(0)
    ds = load_dataset(args.dataset or ensure_builtin())
    backbone = create_backbone(args.source, args.name, args.checkpoint)
    acc = linear_probe(backbone, ds)
    for name, a in acc.items():
        print(f"{name:<12} linear-probe test accuracy {a:.3f}")


def cmd_run(args: argparse.Namespace) -> None:
    import os

    from .config import load_config

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.resume:
        if args.config:
            raise ConfigError("--resume continues a run with its own config.yaml; drop --config")
        from .runtime.launch import config_of_run

        cfg = config_of_run(args.resume, args.set or [])
    else:
        cfg = load_config(args.config, args.set or [])  # rejects bad keys before Ray starts
    if args.address:
        cfg.runtime.address = args.address
    from .runtime import run_experiment

    data = (f"partition {cfg.data.partition_dir}" if cfg.data.partition_dir else
            f"{cfg.data.partitioner} ({cfg.data.num_clients} clients)")
    print(f"rayfed-bpt run: {cfg.algorithm.name} on {data}, {cfg.train.rounds} rounds, "
          f"seed {cfg.seed}", flush=True)
    run_experiment(cfg, resume_dir=args.resume,
                   show_progress="lines" if args.no_progress else "auto")


def cmd_tune(args: argparse.Namespace) -> None:
    import os

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from .tune import load_space, run_sweep

    if not args.resume:
        if not args.space:
            raise ConfigError("give --space FILE (see tune_spaces/) or --resume SWEEP_DIR")
        load_space(args.space, args.set or [])  # rejects a bad space before Ray starts
    s = run_sweep(args.space, args.set or [], address=args.address, resume_dir=args.resume,
                  output_dir=args.output_dir)
    print(f"{s['num_trials']} trials ({s['num_stopped_early']} stopped early) in "
          f"{s['wall_seconds']:.0f}s; best {s['best_metric']:.4f} by trial {s['best_trial']}: "
          f"{s['best_point']}")
    print(f"best config: {s['best_config_path']}  (rayfed-bpt run --config "
          f"{s['best_config_path']})")
    print(f"sweep folder: {s['sweep_dir']}")
    if s["tracking_uri"]:
        from .tracking import ui_command

        print(f"MLflow parent run {s['parent_run_id']} in {s['tracking_uri']}\n"
              f"  browse it: {ui_command(s['tracking_uri'])}")


def cmd_probe(args: argparse.Namespace) -> None:
    from .config import load_config
    from .runtime.probe import probe

    cfg = load_config(args.config, args.set or [])
    r = probe(cfg, device=args.device)
    print(f"one client actor ({cfg.algorithm.name}, batch {cfg.train.batch_size}, client "
          f"{r['client']} with {r['num_train']} examples) on {r['device']}: process memory "
          f"{r['rss_bytes'] / 2**30:.2f} GiB, one local update + evaluation "
          f"{r['local_update_and_eval_seconds']:.1f}s")
    if "cuda_peak_bytes" in r:
        print(f"peak CUDA memory {r['cuda_peak_bytes'] / 2**20:.0f} MiB of "
              f"{r['cuda_total_bytes'] / 2**30:.1f} GiB: {r['actors_per_gpu']} client actors "
              f"fit per GPU -> set runtime.gpus_per_actor={r['gpus_per_actor']}")
    else:
        print("no GPU here: run `rayfed-bpt probe` on a GPU node to size runtime.gpus_per_actor")


def cmd_experiment(args: argparse.Namespace) -> None:
    import os

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from .runtime.suite_runner import run_suite

    cmd = f"rayfed-bpt experiment --suite {args.suite}" + (" --quick" if args.quick else "")
    if args.report_dir:
        cmd += f" --report-dir {args.report_dir}"
    run_suite(args.suite, quick=args.quick, out=args.out, report_dir=args.report_dir,
              address=args.address, tracking=not args.no_tracking, command=cmd)


def add_address_arg(parser: argparse.ArgumentParser) -> None:
    """Every command that starts Ray work can join a cluster instead of starting one."""
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rayfed-bpt",
        description="Personalized federated learning on Ray; flagship: pFedBayesPT.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", help="run a federated experiment on Ray (default: pFedBayesPT on digits-4)",
        description="Run a federated experiment on Ray. With no arguments: pFedBayesPT on "
        "the built-in digits-4 domain_mix partition, on a local Ray, logged to a local "
        "MLflow store under ./rayfed_runs. Under `ray job submit` (or with --address / "
        "RAY_ADDRESS) it joins that cluster.")
    run.add_argument("--config", help="YAML config file")
    run.add_argument("--set", nargs="*", metavar="KEY=VALUE",
                     help="dotted overrides, e.g. algorithm.options.beta=1e-3 train.rounds=20")
    add_address_arg(run)
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="continue an interrupted run from its last checkpoint (--set may "
                     "change tracking.* only)")
    run.add_argument("--no-progress", action="store_true",
                     help="a plain line per round instead of a progress bar (the default "
                     "when stdout is not a terminal)")
    run.set_defaults(func=cmd_run)

    tu = sub.add_parser(
        "tune", help="sweep hyper-parameters with Ray Tune (a trial = one federated run)",
        description="Sweep hyper-parameters with Ray Tune. Each trial is a whole federated "
        "run in its own placement group; ASHA uses the round as its time axis. Writes the "
        "best config as YAML for `rayfed-bpt run --config`, a results table and PNGs, and "
        "logs a parent MLflow run with one child run per trial.")
    tu.add_argument("--space", help="search-space YAML (see tune_spaces/)")
    tu.add_argument("--set", nargs="*", metavar="KEY=VALUE",
                    help="dotted overrides of the space's base, e.g. train.rounds=10")
    add_address_arg(tu)
    tu.add_argument("--resume", metavar="SWEEP_DIR", help="continue an interrupted sweep")
    tu.add_argument("--output-dir", help="where sweeps and the MLflow store go "
                    "(default: runtime.output_dir, ./rayfed_runs)")
    tu.set_defaults(func=cmd_tune)

    ex = sub.add_parser(
        "experiment", help="run an experiment suite: tables and plots (the paper's)",
        description="Run an experiment suite: tune every method's learning rate, run every "
        "method x setting x seed, then the sensitivity studies, and write results.md with "
        "tables and PNG plots. Each run is one Ray task (one CPU); finished runs are cached "
        "under --out, so running the same command again resumes. Everything is logged to "
        "one MLflow experiment.")
    ex.add_argument("--suite", default="paper", help="which suite (default: paper)")
    ex.add_argument("--quick", action="store_true",
                    help="the same suite, reduced (1 seed, tiny runs): a few minutes, for CI")
    ex.add_argument("--out", help="run cache and MLflow store (default: "
                    "./rayfed_runs/experiment-<suite>)")
    ex.add_argument("--report-dir", help="where results.md and figures/ go (default: "
                    "<out>/report; the committed results use docs/)")
    add_address_arg(ex)
    ex.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    ex.set_defaults(func=cmd_experiment)

    pb_ = sub.add_parser(
        "probe", help="measure one client actor's memory: how many fit per GPU",
        description="Measure one client actor's footprint for a config (backbone, algorithm, "
        "one local epoch and evaluation of the largest client) and print how many client "
        "actors fit per GPU, i.e. the runtime.gpus_per_actor to use.")
    pb_.add_argument("--config", help="YAML config file")
    pb_.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
    pb_.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    pb_.set_defaults(func=cmd_probe)

    data = sub.add_parser(
        "data",
        help="prepare, partition and inspect Arrow datasets",
        description="Prepare, partition and inspect Arrow datasets.",
    )
    dsub = data.add_subparsers(dest="data_command", required=True)

    pr = dsub.add_parser(
        "prepare",
        help="import a source into an Arrow dataset file",
        description="Import a source into one Arrow dataset file. The "
        "built-in digits4 set needs no files and builds in seconds.",
    )
    pr.add_argument(
        "source_type",
        nargs="?",
        default="digits4",
        choices=["digits4", "image_folder", "cifar10", "cifar100", "parquet", "hf"],
        help="what to import (default: digits4, the built-in benchmark)",
    )
    pr.add_argument("--source", help="the files to import (folder or file); not for digits4")
    pr.add_argument("--out", help="dataset file to write (default: under the data root)")
    pr.add_argument("--size", type=int, default=32, help="image side after resizing")
    pr.add_argument(
        "--extra-domains", help="digits4 only: comma list of rotate,colour,noise,invert"
    )
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="held-out test share per domain when the source has no split",
    )
    pr.add_argument("--overwrite", action="store_true", help="replace an existing file")
    pr.set_defaults(func=cmd_data_prepare)

    pa_ = dsub.add_parser(
        "partition",
        help="split a dataset into client shards",
        description="Split a dataset into one Arrow shard per client plus "
        "manifest.json. Deterministic given dataset, options and seed.",
    )
    pa_.add_argument(
        "--dataset", help="dataset .arrow file (default: built-in digits4, built if missing)"
    )
    pa_.add_argument(
        "--partitioner",
        default="domain_mix",
        choices=["iid", "dirichlet", "k_classes", "domain", "domain_mix"],
    )
    pa_.add_argument("--num-clients", type=int, default=20)
    pa_.add_argument("--seed", type=int, default=0)
    pa_.add_argument("--alpha", type=float, default=0.5, help="dirichlet: label concentration")
    pa_.add_argument("--beta", type=float, default=0.5, help="domain_mix: domain concentration")
    pa_.add_argument(
        "--label-alpha",
        type=float,
        default=None,
        help="domain_mix: also skew labels with this Dirichlet concentration",
    )
    pa_.add_argument("--k", type=int, default=2, help="k_classes: classes per client")
    pa_.add_argument(
        "--min-samples", type=int, default=10, help="least training examples per client"
    )
    pa_.add_argument(
        "--max-draws",
        type=int,
        default=100,
        help="random partitioners redraw at most this often to meet --min-samples",
    )
    pa_.add_argument("--out", help="output folder (default: <data root>/partitions/<name>)")
    pa_.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    pa_.set_defaults(func=cmd_data_partition)

    sh = dsub.add_parser(
        "show",
        help="print per-client counts and plot them",
        description="Print per-client counts and write a PNG of the label x "
        "client and domain x client mixes.",
    )
    sh.add_argument(
        "partition",
        nargs="?",
        help="partition folder with manifest.json (default: the one the default "
        "`rayfed-bpt run` uses)",
    )
    sh.add_argument("--png", help="where to write the plot (default: <partition>/partition.png)")
    sh.add_argument("--max-rows", type=int, default=50)
    sh.set_defaults(func=cmd_data_show)

    bb = sub.add_parser(
        "backbone",
        help="pre-train or probe the frozen backbone",
        description="Pre-train the built-in backbone, or probe a backbone.",
    )
    bsub = bb.add_subparsers(dest="backbone_command", required=True)
    pt = bsub.add_parser(
        "pretrain",
        help="pre-train the built-in ViT on rendered glyphs",
        description="Pre-train the built-in ViT (rfbpt_vit_digits) on glyphs "
        "rendered from fonts that no federated split uses; seeded.",
    )
    pt.add_argument("--out", help="weights file (.safetensors; default: the packaged "
                    "rayfed_bpt/assets/rfbpt_vit_digits.safetensors)")
    pt.add_argument("--num-images", type=int, default=100_000)
    pt.add_argument("--epochs", type=int, default=40)
    pt.add_argument("--batch-size", type=int, default=512)
    pt.add_argument("--lr", type=float, default=2e-3)
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--device", default="cpu", help="cpu or cuda (much faster)")
    pt.set_defaults(func=cmd_backbone_pretrain)
    pb = bsub.add_parser(
        "probe",
        help="linear-probe accuracy per domain",
        description="Fit a logistic-regression probe on frozen features of "
        "each domain's train split and print its test accuracy.",
    )
    pb.add_argument("--dataset", help="dataset .arrow (default: built-in digits4)")
    pb.add_argument("--source", default="builtin", choices=["builtin", "timm", "file"])
    pb.add_argument("--name", help="timm model name (source timm/file)")
    pb.add_argument("--checkpoint", help="weights file (source file)")
    pb.set_defaults(func=cmd_backbone_probe)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except RayfedError as e:
        print(f"rayfed-bpt: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
