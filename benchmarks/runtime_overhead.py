"""Runtime overhead and scale, measured (no timed tests).

overhead: the same work (100 virtual clients, 10 per round, 5 rounds) through
  the single-process reference loop and through the Ray runtime, on the same
  machine; prints wall time per round and the ratio (target <= 1.10).
scale: 500 virtual clients on local Ray; prints start-up time (target < 30 s),
  peak memory of all Ray processes (target < 8 GiB) and memory per virtual
  client beyond its data (target < 1 MB).

    python benchmarks/runtime_overhead.py [overhead|scale|both]
"""

from __future__ import annotations

import sys
import threading
import time

import psutil

from rayfed_bpt.config import load_config

COMMON = ["data.partitioner=domain_mix", "train.eval_every=1000", "tracking.enabled=false",
          "algorithm.name=pfedbayespt", "runtime.output_dir=/tmp/rayfed_bench"]


def ray_rss() -> int:
    """Resident memory of this process tree plus every Ray process on the machine."""
    total, seen = 0, set()
    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    for p in psutil.process_iter(["cmdline", "name"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "ray" in cmd or (p.info["name"] or "").startswith(("raylet", "gcs_server")):
            procs.append(p)
    for p in procs:
        try:
            if p.pid not in seen:
                seen.add(p.pid)
                total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def overhead() -> None:
    import shutil

    from rayfed_bpt.engine import run_reference
    from rayfed_bpt.runtime import run_experiment

    ov = COMMON + ["data.num_clients=100", "train.clients_per_round=10", "train.rounds=5",
                   "data.min_samples=20", "runtime.run_name=overhead"]
    cfg = load_config(None, ov)
    t = time.perf_counter()
    run_reference(cfg, log=None)
    ref = (time.perf_counter() - t) / cfg.train.rounds

    shutil.rmtree("/tmp/rayfed_bench/overhead", ignore_errors=True)
    s = run_experiment(cfg, show_progress=False, log=None)
    # per-round time inside the driver: excludes Ray start-up, like the reference loop
    rt = sum(s["round_seconds"]) / len(s["round_seconds"])
    print(f"overhead: reference {ref:.2f} s/round, Ray runtime {rt:.2f} s/round "
          f"({len(s['actors'])} actors x {s['actors'][0]['threads']} thread), ratio "
          f"{rt / ref:.3f} (target <= 1.10); start-up {s['startup_seconds']:.1f} s")


def scale(num_clients: int = 500) -> None:

    from rayfed_bpt.runtime import run_experiment

    ov = COMMON + [f"data.num_clients={num_clients}", "train.clients_per_round=10",
                   "train.rounds=2", "data.min_samples=10", "runtime.run_name=scale"]
    cfg = load_config(None, ov)
    import shutil

    shutil.rmtree("/tmp/rayfed_bench/scale", ignore_errors=True)
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], ray_rss())
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    s = run_experiment(cfg, show_progress=False, log=None)
    stop.set()
    th.join()
    mem = s["actor_memory"]
    load_per_client = sum(m["rss_after_clients"] - m["rss_before_clients"] for m in mem)
    end_per_client = sum(m["rss"] - m["rss_before_clients"] for m in mem)
    print(f"scale: {num_clients} virtual clients on {len(s['actors'])} actors; start-up "
          f"{s['startup_seconds']:.1f} s (target < 30); peak memory of all Ray processes "
          f"{peak[0] / 2**30:.2f} GiB (target < 8); per virtual client: tensors "
          f"{max(m['client_bytes_max'] for m in mem) / 2**10:.1f} KiB max; actor RSS growth "
          f"{load_per_client / num_clients / 2**10:.1f} KiB when loading the clients, "
          f"{end_per_client / num_clients / 2**10:.1f} KiB by the end of the run, training "
          "working set included (target < 1 MB)")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "both"
    if what in ("overhead", "both"):
        overhead()
    if what in ("scale", "both"):
        import ray

        ray.shutdown()
        scale()
