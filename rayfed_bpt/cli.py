"""The ``rayfed-bpt`` command. Thin: it parses arguments and calls the library.

Each command is written once: its handler, with its arguments as decorators right
above it (``cli_parser``: how commands are declared and parsed). Options that set
config keys are derived from the config schema (``schema_options``): their names,
types, defaults and help are the schema's.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .cli_parser import (
    address_arg,
    arg,
    build_parser,
    command,
    config_args,
    import_arg,
    no_ray_stats,
    schema_options,
    with_args,
)
from .config import BackboneConfig  # torch-free: the schemas only
from .errors import ConfigError, RayfedError


@command("run", help="run a federated experiment on Ray (default: pFedBayesPT on digits-4)",
         description="Run a federated experiment on Ray. With no arguments: pFedBayesPT on "
         "the built-in digits-4 domain_mix partition, on a local Ray, logged to a local "
         "MLflow store under ./rayfed_runs. Under `ray job submit` (or with --address / "
         "RAY_ADDRESS) it joins that cluster.")
@with_args(config_args, address_arg, import_arg)
@arg("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint "
     "(--set may change tracking.* only)")
@arg("--no-progress", action="store_true", help="a plain line per round instead of a progress "
     "bar (the default when stdout is not a terminal)")
def cmd_run(args: argparse.Namespace) -> None:
    from .config import load_config

    no_ray_stats()
    if args.resume:
        if args.config:
            raise ConfigError("--resume continues a run with its own config.yaml; drop --config")
        from .plugins import import_plugins
        from .runtime.preflight import config_of_run

        import_plugins(args.imports)
        cfg = config_of_run(args.resume, args.set)
    else:  # rejects bad keys before Ray starts
        cfg = load_config(args.config, args.set, args.imports)
    if args.address:
        cfg.runtime.address = args.address
    from .runtime import run_experiment

    data = (f"partition {cfg.data.partition_dir}" if cfg.data.partition_dir else
            f"{cfg.data.partitioner} ({cfg.data.num_clients} clients)")
    print(f"rayfed-bpt run: {cfg.algorithm.name} on {data}, {cfg.train.rounds} rounds, "
          f"seed {cfg.seed}", flush=True)
    run_experiment(cfg, resume_dir=args.resume,
                   show_progress="lines" if args.no_progress else "auto")


@command("tune", help="sweep hyper-parameters with Ray Tune (a trial = one federated run)",
         description="Sweep hyper-parameters with Ray Tune. Each trial is a whole federated "
         "run in its own placement group; ASHA uses the round as its time axis. Writes the "
         "best config as YAML for `rayfed-bpt run --config`, a results table and PNGs, and "
         "logs a parent MLflow run with one child run per trial.")
@arg("--space", help="search-space YAML (see tune_spaces/)")
@arg("--set", nargs="*", metavar="KEY=VALUE", default=[],
     help="dotted overrides of the space's base, e.g. train.rounds=10")
@with_args(address_arg, import_arg)
@arg("--resume", metavar="SWEEP_DIR", help="continue an interrupted sweep")
@arg("--output-dir", help="where sweeps and the MLflow store go (default: runtime.output_dir, "
     "./rayfed_runs)")
def cmd_tune(args: argparse.Namespace) -> None:
    no_ray_stats()
    from .tune import load_space, run_sweep

    if not args.resume:
        if not args.space:
            raise ConfigError("give --space FILE (see tune_spaces/) or --resume SWEEP_DIR")
        load_space(args.space, args.set, args.imports)  # a bad space: refused before Ray
    s = run_sweep(args.space, args.set, address=args.address, resume_dir=args.resume,
                  output_dir=args.output_dir, plugins=args.imports)
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


@command("experiment", help="run an experiment suite: tables and plots (the paper's)",
         description="Run an experiment suite: tune every method's learning rate, run every "
         "method x setting x seed, then the sensitivity studies, and write results.md with "
         "tables and PNG plots. Each run is one Ray task (one CPU); finished runs are cached "
         "under --out, so running the same command again resumes. Everything is logged to "
         "one MLflow experiment.")
@arg("--suite", default="paper", help="which suite: paper, or generalization (new clients "
     "and unseen domains; docs/generalization.md) (default: paper)")
@arg("--quick", action="store_true",
     help="the same suite, reduced (1 seed, tiny runs): a few minutes, for CI")
@arg("--out", help="run cache and MLflow store (default: ./rayfed_runs/experiment-<suite>)")
@arg("--report-dir", help="where results.md and figures/ go (default: <out>/report; the "
     "committed results use docs/)")
@with_args(address_arg, import_arg)
@arg("--add-method", dest="add_methods", action="append", default=[], metavar="NAME",
     help="run this registered algorithm too, as a row of every setting, tuned like the "
     "others (repeatable; a plugin's: with --import)")
@arg("--no-tracking", action="store_true", help="do not log to MLflow")
def cmd_experiment(args: argparse.Namespace) -> None:
    no_ray_stats()
    from .experiments.runner import run_suite

    cmd = f"rayfed-bpt experiment --suite {args.suite}" + (" --quick" if args.quick else "")
    cmd += "".join(f" --import {m}" for m in args.imports)
    cmd += "".join(f" --add-method {m}" for m in args.add_methods)
    if args.report_dir:
        cmd += f" --report-dir {args.report_dir}"
    run_suite(args.suite, quick=args.quick, out=args.out, report_dir=args.report_dir,
              address=args.address, tracking=not args.no_tracking, command=cmd,
              add_methods=args.add_methods, plugins=args.imports)


@command("config", help="print a config, checked (or the reference of every key)",
         description="Print the config a `run` with these arguments would use, every key "
         "filled in and checked, as YAML; or, with --reference, the table of every config "
         "key with its default and meaning (docs/config.md).")
@with_args(config_args, import_arg)
@arg("--reference", action="store_true", help="the table of every key (markdown)")
def cmd_config(args: argparse.Namespace) -> None:
    import yaml

    from .config import load_config
    from .config_reference import reference_markdown

    if args.reference:  # with --import, the plugins' algorithms' options too
        if args.imports:
            from .plugins import import_plugins

            import_plugins(args.imports)
        print(reference_markdown(plugins=bool(args.imports)), end="")
        return
    cfg = load_config(args.config, args.set, args.imports)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")


@command("size-actors", help="measure one client actor's memory: how many fit per GPU",
         description="Measure one client actor's footprint for a config (backbone, algorithm, "
         "one local epoch and evaluation of the largest client) and print how many client "
         "actors fit per GPU, i.e. the runtime.gpus_per_actor to use.")
@with_args(config_args, import_arg)
@arg("--device", choices=["cpu", "cuda"], help="default: cuda if available")
@arg("--gpu-gb", type=float, default=80.0, help="on a CPU: the GPU memory to size for "
     "(default 80, an H100)")
def cmd_size_actors(args: argparse.Namespace) -> None:
    from .config import load_config
    from .runtime.actor_size import measure_actor

    cfg = load_config(args.config, args.set, args.imports)
    r = measure_actor(cfg, device=args.device, gpu_gb=args.gpu_gb)
    s = r["sized"]
    where = "this GPU" if r["device"] == "cuda" else f"a {r['gpu_bytes'] / 1e9:.0f} GB GPU"
    print(f"measured ({r['precision']}): a training step keeps "
          f"{s['train_bytes_per_image'] / 2**20:.1f} MiB an image, a forward pass "
          f"{s['infer_bytes_per_image'] / 2**20:.1f} MiB"
          f"{'' if s['infer_measured'] else ' (estimated)'}; backbone "
          f"{s['weights_bytes'] / 2**20:.0f} MiB. Budget {s['budget_bytes'] / 2**30:.1f} GiB "
          f"({r['share']:g} of {where}): group size {s['group_size']}, evaluation chunk "
          f"{s['eval_chunk']} images, {r['budget_actors_per_gpu']} actors per GPU")
    print(f"one client actor ({cfg.algorithm.name}, batch {cfg.train.batch_size}, a work "
          f"unit of {r['group_size']} client(s), the largest client {r['client']} with "
          f"{r['num_train']} examples) on {r['device']}: process memory "
          f"{r['rss_bytes'] / 2**30:.2f} GiB, one local update + evaluation "
          f"{r['local_update_and_eval_seconds']:.1f}s")
    if "cuda_peak_bytes" in r:
        print(f"peak CUDA memory {r['cuda_peak_bytes'] / 2**20:.0f} MiB of "
              f"{r['cuda_total_bytes'] / 2**30:.1f} GiB: {r['actors_per_gpu']} client actors "
              f"fit per GPU -> set runtime.gpus_per_actor={r['gpus_per_actor']}")
    else:
        print("no GPU here: run `rayfed-bpt size-actors` on a GPU node to size "
              "runtime.gpus_per_actor")


@command("backbone pretrain", help="pre-train the built-in ViT on rendered glyphs",
         description="Pre-train the built-in ViT (rfbpt_vit_digits) on glyphs rendered from "
         "fonts that no federated split uses; seeded.")
@arg("--out", help="weights file (.safetensors; default: the packaged "
     "rayfed_bpt/assets/rfbpt_vit_digits.safetensors)")
@arg("--num-images", type=int, default=100_000)
@arg("--epochs", type=int, default=40)
@arg("--batch-size", type=int, default=512)
@arg("--lr", type=float, default=2e-3)
@arg("--seed", type=int, default=0)
@arg("--device", default="cpu", help="cpu or cuda (much faster)")
def cmd_backbone_pretrain(args: argparse.Namespace) -> None:
    from .models.backbone import BUILTIN_WEIGHTS
    from .models.pretrain import pretrain_backbone

    r = pretrain_backbone(out=args.out or BUILTIN_WEIGHTS, num_images=args.num_images,
                          epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          seed=args.seed, device=args.device)
    print(f"wrote {r['path']} ({r['params']} parameters, glyph val acc {r['val_acc']:.3f}, "
          f"{r['seconds']:.0f}s)")


@command("backbone probe", help="linear-probe accuracy per domain",
         description="Fit a logistic-regression probe on frozen features of each domain's "
         "train split and print its test accuracy.")
@arg("--dataset", help="dataset .arrow (default: built-in digits4)")
@schema_options(BackboneConfig)
def cmd_backbone_probe(args: argparse.Namespace) -> None:
    import torch

    from .data import dataset_path, load_dataset
    from .models import create_backbone
    from .models.pretrain import linear_probe

    bb = BackboneConfig(**{f.name: getattr(args, f.name)  # checked like a run's
                           for f in dataclasses.fields(BackboneConfig)})
    torch.manual_seed(0)
    ds = load_dataset(dataset_path(args.dataset))
    backbone = create_backbone(**dataclasses.asdict(bb))
    acc = linear_probe(backbone, ds)
    for name, a in acc.items():
        print(f"{name:<12} linear-probe test accuracy {a:.3f}")


@command("list", help="what is registered by name, and where it came from",
         description="List the registered algorithms, partitioners, data importers or "
         "client pools (runtime.pool): "
         "the built-ins, those of installed packages' entry points, and those of --import "
         "modules, each with where it came from.")
@arg("kind", choices=["algorithms", "partitioners", "importers", "pools"])
@with_args(import_arg)
def cmd_list(args: argparse.Namespace) -> None:
    from .api import registered

    rows = registered(args.kind, args.imports)
    width = max(len(n) for n in rows)
    for name, where in rows.items():
        print(f"{name:<{width}}  {where}")


from . import cli_data  # noqa: E402, F401 - the `data` commands, listed after these


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
