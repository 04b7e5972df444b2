"""How rayfed-bpt scales with the population: 1,000 / 10,000 clients on this machine.

For each algorithm (fedavg_vpt, and pfedbayespt with ``train.optimizer_state=keep``,
whose every trained client keeps ~3.5 MB of generator, sigma head and Adam moments)
and each population M: an iid partition of the synthetic 32x32 data set of
``runtime_speed.py`` (32 training and 2 test images a client, written once; its time
is the "partition" column), then ``rayfed-bpt run`` with 2 client actors, K clients a
round, 3 rounds, one local step each; round 2 evaluates a seeded sample of 500
clients (``train.eval_fraction``). The run is stopped after round 2 by the
deterministic fault hook (``driver_exit@2``) and resumed with ``--resume`` for round 3.

- start -> round 1: seconds from the command's start until round 1 begins;
- s/round: training rounds (1 and 3), without evaluation;
- eval 500: the sampled evaluation of round 2;
- peak PSS: the largest summed PSS of the command and every process it started
  (Ray's included), sampled every 0.5 s, over both commands;
- ckpt MB/round: bytes round 3's checkpoint wrote (its new pieces and the global
  file), beside the personal state of the clients it trained;
- resume: seconds from ``--resume``'s start until round 3 begins.

100,000 clients (``--extrapolate``) is not run here (a one-file-per-client partition
of that size is ~10 GB): its row is extrapolated from the measured per-client costs
of the largest measured population, and says so.

    python benchmarks/scale.py [--sizes 1000,10000] [--algorithms fedavg_vpt,pfedbayespt]
    python benchmarks/scale.py --sizes 200 --per-round 20 --eval 50   # smallest (a test)

On a cluster (``--address``: the run joins it, as ``runtime.address``; peak PSS is
then of the submitting process tree only): e.g. the two-node local cluster of
``tests/test_cluster.py``, token auth on:

    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=/tmp/token; openssl rand -hex 32 > /tmp/token
    ray start --head --port=6390 --num-cpus=1 --node-ip-address=127.0.0.1 \
        --dashboard-host=127.0.0.1
    ray start --address=127.0.0.1:6390 --num-cpus=1 --node-ip-address=127.0.0.1
    python benchmarks/scale.py --sizes 1000 --address 127.0.0.1:6390
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from runtime_speed import ENV, PeakPSS, synthetic_partition  # noqa: E402

KEPT = {"pfedbayespt": ["train.optimizer_state=keep"], "fedavg_vpt": []}


def partition(work: Path, m: int) -> tuple[Path, float]:
    """The partition of M clients, and how long writing it took (cached with it)."""
    stamp = work / "data" / f"partition-seconds-M{m}.json"
    t0 = time.time()
    part = synthetic_partition(work / "data", m, 1)
    if not stamp.exists():
        stamp.write_text(json.dumps(time.time() - t0))
    return part, json.loads(stamp.read_text())


def command(cmd: list[str], mem: list) -> tuple[int, dict[int, float], float, str]:
    """Run ``cmd``; return its exit code, when each "round N/R" line appeared (seconds
    after the start), its wall time and its output; its peak PSS goes into ``mem``."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    watch = PeakPSS(proc.pid)
    seen, lines = {}, []
    for line in proc.stdout:
        lines.append(line)
        if (hit := re.match(r"\s*round (\d+)/\d+", line)) and int(hit[1]) not in seen:
            seen[int(hit[1])] = time.time() - t0
    proc.wait()
    mem.append(watch.stop())
    return proc.returncode, seen, time.time() - t0, "".join(lines)


def checkpoint_bytes(run_dir: Path) -> tuple[int, int]:
    """Bytes the latest checkpoint wrote (pieces new since the previous one, and its own
    file), and the personal state of the clients its round trained."""
    from safetensors import safe_open

    def manifest(name: str) -> dict:
        with safe_open(str(run_dir / name), framework="numpy") as f:
            return json.loads(f.metadata()["rayfed_bpt"])["personal"]

    latest, prev = manifest("checkpoint.safetensors"), manifest("checkpoint.prev.safetensors")
    old = {p[0] for p in prev.values()}
    new = {p[0]: p[1] for p in latest.values() if p[0] not in old}
    trained = sum(p[1] for c, p in latest.items() if prev.get(c) != p)
    return sum(new.values()) + (run_dir / "checkpoint.safetensors").stat().st_size, trained


def run(work: Path, alg: str, m: int, k: int, n_eval: int, address: str | None,
        extra: list[str] = ()) -> dict:
    part, part_s = partition(work, m)
    name = f"{alg}-M{m}-{time.time_ns()}"
    out = work / "runs"
    run_dir = out / name
    args = ["--set", f"data.partition_dir={part}", f"algorithm.name={alg}",
            f"train.clients_per_round={k}", "train.rounds=3", "train.eval_every=2",
            f"train.eval_fraction={min(1.0, n_eval / m)}", "train.eval_final_all=false",
            "train.batch_size=32", "tracking.enabled=false", f"runtime.output_dir={out}",
            f"runtime.run_name={name}", "runtime.num_actors=2",
            "runtime.faults=[driver_exit@2]", "runtime.max_driver_restarts=0", *KEPT[alg],
            *extra,
            *([f"runtime.address={address}"] if address else [])]
    cli = [sys.executable, "-m", "rayfed_bpt.cli", "run", "--no-progress"]
    mem: list[float] = []
    from rayfed_bpt.engine import checkpoint_round, load_checkpoint

    rc, seen, _, log = command(cli + args, mem)
    if rc != 2 or checkpoint_round(run_dir) != 2:
        raise RuntimeError(f"the run should stop after round 2:\n{log[-3000:]}")
    rc, seen3, _, log = command(cli + ["--resume", str(run_dir)], mem)
    if rc != 0 or 3 not in seen3:
        raise RuntimeError(f"--resume failed:\n{log[-3000:]}")

    history = load_checkpoint(run_dir)[0].history
    train = [h["round_seconds"] - h.get("eval_seconds", 0.0) for h in history]
    wrote, trained = checkpoint_bytes(run_dir)
    disk = sum(p.stat().st_size for p in (run_dir / "personal").rglob("*") if p.is_file())
    return {"algorithm": alg, "clients": m, "per_round": k, "partition_s": part_s,
            "start_to_round1_s": seen[1] - history[0]["round_seconds"],
            "s_per_round": (train[0] + train[2]) / 2,
            "eval_s": history[1]["eval_seconds"], "eval_clients": history[1]["eval_clients"],
            "peak_pss_gb": max(mem), "ckpt_mb_round": wrote / 2**20,
            "trained_state_mb": trained / 2**20, "personal_dir_mb": disk / 2**20,
            "resume_s": seen3[3] - history[2]["round_seconds"]}


def extrapolate(rows: list[dict], m: int) -> dict:
    """The largest measured row carried to ``m`` clients: what grows with M (partition
    writing, start-up and resume: reading the manifest and checking every file's stamp)
    on the line through the two largest measured sizes (through the origin with one);
    what a round touches (s/round, evaluation of a sample, checkpoint bytes, memory)
    as measured, since it depends on the clients of a round, not on M."""
    last = rows[-1]
    first = rows[-2] if len(rows) > 1 else {**last, "clients": 0, "partition_s": 0.0,
                                              "start_to_round1_s": 0.0, "resume_s": 0.0}
    out = {**last, "clients": m, "extrapolated": True}
    for key in ("partition_s", "start_to_round1_s", "resume_s"):
        slope = (last[key] - first[key]) / (last["clients"] - first["clients"])
        out[key] = last[key] + slope * (m - last["clients"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--algorithms", default="fedavg_vpt,pfedbayespt")
    ap.add_argument("--per-round", type=int, default=100)
    ap.add_argument("--eval", type=int, default=500, help="clients a sampled evaluation covers")
    ap.add_argument("--extrapolate", type=int, default=100_000)
    ap.add_argument("--work", default="/tmp/rayfed_scale")
    ap.add_argument("--address", help="a running Ray cluster to use (runtime.address)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="more overrides for every run, e.g. runtime.personal_memory_mb=256")
    a = ap.parse_args()
    work = Path(a.work)
    os.environ["RAYFED_BPT_DATA"] = ENV["RAYFED_BPT_DATA"] = str(work / "data")
    rows = []
    for alg in a.algorithms.split(","):
        measured = []
        for m in (int(x) for x in a.sizes.split(",")):
            row = run(work, alg, m, min(a.per_round, m), a.eval, a.address, a.set)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                              for k, v in row.items()}), flush=True)
            measured.append(row)
        rows += measured
        if a.extrapolate:
            rows.append(extrapolate(measured, a.extrapolate))
    print("\n| algorithm | clients | partition s | start -> round 1 s | s/round | eval "
          f"{a.eval} s | peak PSS GB | ckpt MB/round (trained state MB) | resume s |")
    print("|---" * 9 + "|")
    for r in rows:
        mark = " (extrapolated)" if r.get("extrapolated") else ""
        print(f"| {r['algorithm']} | {r['clients']:,}{mark} | {r['partition_s']:.0f} | "
              f"{r['start_to_round1_s']:.1f} | {r['s_per_round']:.1f} | {r['eval_s']:.1f} | "
              f"{r['peak_pss_gb']:.2f} | {r['ckpt_mb_round']:.0f} "
              f"({r['trained_state_mb']:.0f}) | {r['resume_s']:.1f} |")


if __name__ == "__main__":
    main()
