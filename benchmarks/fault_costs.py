"""What each fault costs a `rayfed-bpt run`: seconds and rounds redone.

Every fault is injected at a chosen round through ``runtime.faults`` (no timers),
on one small run (4 clients, 2 client actors, 4 rounds, checkpoint every round),
and each faulty run is compared with the same run undisturbed:

- a client actor exits as it starts round 2's first unit (``actor_exit@2``);
- the driver actor exits after round 2's checkpoint (``driver_exit@2``), and
  once more with ``checkpoint_every=2`` and ``driver_exit@3`` (one round redone);
- Ctrl-C and SIGTERM after round 2 (``pause@2`` holds the run there): seconds from
  the signal to the command's exit, then ``--resume`` to the end;
- a tracking URI where nothing listens: seconds to the error.

    python benchmarks/fault_costs.py [--work /tmp/rayfed_faults]
    python benchmarks/fault_costs.py --quick    # smallest: the undisturbed run and actor_exit
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "rayfed_bpt.cli", "run", "--no-progress"]
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}


def base(part: Path, out: Path, name: str, *extra: str) -> list[str]:
    return ["--set", f"data.partition_dir={part}", "data.max_train_per_client=64",
            "data.max_test_per_client=40", "train.rounds=4", "train.fraction=1.0",
            "algorithm.options.prompt_len=2", "runtime.num_actors=2",
            f"runtime.output_dir={out}", f"runtime.run_name={name}", *extra]


def timed(args: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run(CLI + args, capture_output=True, text=True, env=ENV, timeout=900)
    if r.returncode != 0:
        raise SystemExit(f"{args}: exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return time.perf_counter() - t, r.stdout + r.stderr


def redone(fault: str, every: int) -> int:
    """Rounds trained twice: a driver dying after round K goes back to the last
    checkpoint (rounds that are multiples of ``every``); a client actor's death
    redoes only its work unit (no whole round)."""
    kind, k = fault.split("@")
    return int(k) % every if kind == "driver_exit" else 0


def history(run_dir: Path) -> list:
    from rayfed_bpt.engine.checkpoint import load_checkpoint

    return [{k: v for k, v in m.items() if not k.endswith("seconds")}
            for m in load_checkpoint(run_dir)[0].history]


def signal_stop(part: Path, out: Path, name: str, sig: int) -> tuple[float, float]:
    from rayfed_bpt.runtime.faults import paused

    run_dir = out / name
    proc = subprocess.Popen(CLI + base(part, out, name, "runtime.faults=[pause@2]"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    while not paused(run_dir, 2):
        if proc.poll() is not None:
            raise SystemExit(proc.stdout.read()[-2000:])
        time.sleep(0.1)
    t = time.perf_counter()
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    stop = time.perf_counter() - t
    resume, _ = timed(["--resume", str(run_dir)])
    return stop, resume


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/rayfed_faults")
    ap.add_argument("--quick", action="store_true", help="only a client actor's exit")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    os.environ["RAYFED_BPT_DATA"] = ENV["RAYFED_BPT_DATA"] = str(work / "data")
    from rayfed_bpt.data import PartitionConfig, ensure_builtin, load_dataset, write_partition

    part = write_partition(load_dataset(ensure_builtin()),
                           PartitionConfig("domain_mix", num_clients=4, seed=0), work / "p4")
    out = work / "runs"
    clean, _ = timed(base(part, out, "clean"))
    want = history(out / "clean")
    rows = [("none (reference)", clean, 0, True)]
    faults = [("client actor exits in round 2", "actor_exit@2", 1),
              ("driver exits after round 2", "driver_exit@2", 1),
              ("driver exits after round 3, checkpoint every 2", "driver_exit@3", 2)]
    for name, fault, every in faults[:1] if args.quick else faults:
        tag = fault.replace("@", "")
        took, _ = timed(base(part, out, tag, f"runtime.faults=[{fault}]",
                             f"runtime.checkpoint_every={every}"))
        rows.append((name, took, redone(fault, every), history(out / tag) == want))
    print(f"undisturbed run: {clean:.1f} s for 4 rounds (4 clients, 2 actors)\n")
    print("| fault | wall s | extra s vs undisturbed | rounds redone | metrics identical |")
    print("|---|---|---|---|---|")
    for name, took, again, same in rows:
        print(f"| {name} | {took:.1f} | {took - clean:+.1f} | {again} | {same} |")
    if args.quick:
        return
    print("\n| stop | signal to exit s | --resume to the end s | metrics identical |")
    print("|---|---|---|---|")
    for label, sig in [("Ctrl-C after round 2", signal.SIGINT),
                       ("SIGTERM after round 2", signal.SIGTERM)]:
        tag = f"sig{int(sig)}"
        stop, resume = signal_stop(part, out, tag, sig)
        print(f"| {label} | {stop:.1f} | {resume:.1f} | {history(out / tag) == want} |")
    t = time.perf_counter()
    r = subprocess.run(CLI + base(part, out, "nourl", "tracking.tracking_uri=http://127.0.0.1:9"),
                       capture_output=True, text=True, env=ENV, timeout=300)
    print(f"\nunreachable tracking URI: exit {r.returncode} after "
          f"{time.perf_counter() - t:.1f} s, run folder created: {(out / 'nourl').exists()}")
    print(json.dumps({"clean_s": round(clean, 1)}))


if __name__ == "__main__":
    main()
