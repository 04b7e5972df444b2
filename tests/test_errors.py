"""The bad-input catalogue (docs/errors.md): each bad input gives one clear message,
exit status 2, no traceback, no partial files and no hang.

``python tests/test_errors.py`` prints the catalogue as Markdown from the real
messages (how docs/errors.md was made); the test checks the document lists every
case with the message it really gives.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "errors.md"

# (id, what is wrong, command after `rayfed-bpt`, the message's telling part, seconds)
# {tmp} is a scratch folder, {part} a good partition, {runs} the output folder.
CASES = [
    ("unknown-key", "a top-level key that does not exist",
     "run --set trian.rounds=3", "unknown config key(s) ['trian']", 5),
    ("unknown-nested-key", "a misspelt key in a section",
     "run --set train.roundz=3", "unknown config key(s) ['train.roundz']", 5),
    ("wrong-type", "a word where a number belongs",
     "run --set train.rounds=two", "train.rounds='two' must be an integer", 5),
    ("negative-rounds", "a count below one",
     "run --set train.rounds=-1", "train.rounds must be >= 1, got -1", 5),
    ("zero-lr", "a learning rate of zero", "run --set train.lr=0", "train.lr must be > 0", 5),
    ("fraction", "a sampling fraction above one",
     "run --set train.fraction=1.5", "train.fraction must lie in (0, 1]", 5),
    ("no-equals", "an override without a value", "run --set rounds", "is not KEY=VALUE", 5),
    ("yaml-syntax", "a config file that is not YAML",
     "run --config {tmp}/bad.yaml", "is not valid YAML", 5),
    ("yaml-list", "a config file holding a list",
     "run --config {tmp}/list.yaml", "expected a mapping at the top level", 5),
    ("missing-config", "a config file that does not exist",
     "run --config {tmp}/nope.yaml", "nope.yaml does not exist", 5),
    ("backbone-source", "an unknown backbone source",
     "run --set backbone.source=hub", "backbone.source='hub'; allowed", 5),
    ("placement", "an unknown placement strategy",
     "run --set runtime.placement_strategy=RANDOM", "allowed: ['PACK', 'SPREAD'", 5),
    ("group-size", "a batched group of no clients",
     "run --set runtime.group_size=0", "runtime.group_size=0; allowed: auto", 5),
    ("fault-spec", "a malformed fault-injection spec",
     "run --set runtime.faults=[boom]", "write KIND@ROUND", 5),
    ("renamed-key", "a key under its old name",
     "run --set data.beta=0.3", "data.beta was renamed data.domain_alpha", 5),
    ("val-fraction", "a validation share that leaves too little to train on",
     "run --set data.val_fraction=0.95", "data.val_fraction must lie in [0, 0.9)", 5),
    ("nothing-to-evaluate", "test evaluation off with no validation split",
     "run --set train.eval_test=false", "train.eval_test=false needs data.val_fraction > 0", 5),
    ("negative-seed", "a negative seed", "run --set seed=-1", "seed must be >= 0, got -1", 5),
    ("empty-value", "an empty value where a name belongs", "run --set runtime.output_dir=''",
     "runtime.output_dir is empty: give it a value, or leave it unset", 5),
    ("long-path", "a path no file system can hold",
     "run --set data.dataset=" + "d" * 300 + ".arrow",
     "data.dataset: its part 'dddddddddddddddddddddddd'... is 306 bytes long; a file system "
     "takes at most 255", 5),
    ("bad-address", "a Ray address that is not one",
     "run --set runtime.address=head-node", "runtime.address='head-node': write HOST:PORT", 5),
    ("zero-clients", "a federation of no clients",
     "run --set data.num_clients=0", "data.num_clients must be >= 1, got 0", 5),
    ("dirichlet-zero", "a Dirichlet concentration of zero",
     "run --set data.partitioner=dirichlet data.label_alpha=0", "data.label_alpha must be > 0",
     5),
    ("unknown-partitioner", "a partitioner that does not exist",
     "run --set data.partitioner=nope runtime.output_dir={runs}",
     "unknown partitioner 'nope' (data.partitioner / --partitioner); allowed:", 10),
    ("dirichlet-no-skew", "a Dirichlet label partition without its concentration",
     "run --set data.partitioner=dirichlet", "data.partitioner=dirichlet needs data.label_alpha",
     5),
    ("too-many-clients", "more clients than the data can give test examples",
     "run --set data.num_clients=20000 runtime.output_dir={runs}", "clients but only", 60),
    ("unknown-ood-domain", "a held-out domain the data set does not have",
     "run --set data.ood_domains=[sketch] runtime.output_dir={runs}",
     "data.ood_domains names ['sketch'], not a domain of this data set; its domains:", 10),
    ("all-clients-new", "every client held out as new",
     "run --set data.num_clients=4 data.new_clients=4",
     "data.new_clients=4 holds out 4 of data.num_clients=4: leave at least one client", 5),
    ("missing-dataset", "a dataset file that does not exist",
     "run --set data.dataset={tmp}/none.arrow runtime.output_dir={runs}",
     "none.arrow does not exist", 10),
    ("not-arrow", "a dataset that is not an Arrow file",
     "run --set data.dataset={tmp}/text.arrow runtime.output_dir={runs}",
     "is not a readable Arrow IPC file", 10),
    ("truncated-dataset", "a dataset cut short",
     "run --set data.dataset={tmp}/cut.arrow runtime.output_dir={runs}",
     "is not a readable Arrow IPC file", 10),
    ("bad-sidecar", "a dataset whose JSON sidecar is corrupt",
     "run --set data.dataset={tmp}/sidecar/d.arrow runtime.output_dir={runs}",
     "d.json is not valid JSON", 10),
    ("no-manifest", "a partition folder without manifest.json",
     "run --set data.partition_dir={tmp} runtime.output_dir={runs}",
     "no manifest.json in", 10),
    ("bad-manifest", "a manifest.json that is not JSON",
     "run --set data.partition_dir={tmp}/badjson runtime.output_dir={runs}",
     "manifest.json is not valid JSON", 10),
    ("manifest-no-clients", "a manifest without its clients",
     "run --set data.partition_dir={tmp}/noclients runtime.output_dir={runs}",
     "lacks ['clients']", 10),
    ("corrupt-shard", "a client shard changed after it was written",
     "run --set data.partition_dir={tmp}/corrupt runtime.output_dir={runs}",
     "client_00001.arrow changed since the partition's manifest recorded it", 10),
    ("changed-dataset", "the dataset a partition indexes, changed since the partition was made",
     "run --set data.partition_dir={tmp}/indexed/partitions/p runtime.output_dir={runs}",
     "changed since the partition's manifest recorded it", 10),
    ("dataset-gone", "the dataset a partition indexes, deleted",
     "run --set data.partition_dir={tmp}/orphan/partitions/p runtime.output_dir={runs}",
     "that partition", 10),
    ("natural-no-groups", "the natural partitioner on a data set without writer/user groups",
     "run --set data.partitioner=natural runtime.output_dir={runs}",
     "this data set has no group column", 10),
    ("output-under-file", "an output folder below a regular file",
     "run --set data.partition_dir={part} runtime.output_dir={tmp}/file.txt/runs",
     "is a file, not a folder", 10),
    ("output-broken-link", "an output folder through a link to nowhere",
     "run --set data.partition_dir={part} runtime.output_dir={tmp}/broken/runs",
     "which does not exist. Fix the link", 10),
    ("run-name-too-long", "a run name longer than the file system allows",
     "run --set data.partition_dir={part} runtime.output_dir={runs} runtime.run_name="
     + "x" * 256, "this file system takes folder names of at most 255", 10),
    ("run-name-taken", "a run name whose folder exists",
     "run --set data.partition_dir={part} runtime.output_dir={tmp} runtime.run_name=taken",
     "already exists; resume it", 10),
    ("resume-not-a-run", "--resume on a folder that is not a run",
     "run --resume {tmp}/empty", "is not a run folder (no config.yaml)", 5),
    ("resume-truncated", "--resume on a run whose checkpoints are cut short",
     "run --resume {tmp}/cutrun", "no readable checkpoint in", 5),
    ("resume-pickle", "--resume on a run holding a pickled checkpoint",
     "run --resume {tmp}/pickled", "never loaded (unpickling a file can run code)", 5),
    ("resume-pieces-missing", "--resume on a run whose clients' personal states were deleted",
     "run --resume {tmp}/lostpieces", "personal state piece(s) that are missing", 5),
    ("resume-set", "--resume changing more than tracking.*",
     "run --resume {tmp}/cutrun --set train.rounds=9", "only tracking.* may change", 5),
    ("tracking-down", "a tracking server where nothing listens",
     "run --set data.partition_dir={part} runtime.output_dir={runs} "
     "tracking.tracking_uri=http://127.0.0.1:9", "cannot be reached", 20),
    ("gpu-on-cpu", "GPUs asked for on a cluster without one",
     "run --set data.partition_dir={part} runtime.output_dir={runs} "
     "runtime.gpus_per_actor=0.5", "the Ray cluster has no GPU", 90),
    ("algorithm-option", "a misspelt algorithm option",
     "run --set data.partition_dir={part} runtime.output_dir={runs} "
     "algorithm.options.betta=1", "unknown config key(s) ['algorithm.options.betta']", 2),
    ("algorithm-name", "an algorithm that is not registered",
     "run --set algorithm.name=nope", "unknown algorithm.name 'nope'; allowed:", 2),
    ("algorithm-option-range", "an algorithm option out of its bounds",
     "run --set algorithm.options.prompt_len=-3",
     "algorithm.options.prompt_len must lie in [1, 512], got -3", 2),
    ("pool-unknown", "a client pool that is not registered",
     "run --set runtime.pool=gpu_farm", "runtime.pool='gpu_farm'; allowed:", 2),
    ("tune-distribution", "an unknown distribution in a search space",
     "tune --space {tmp}/space.yaml", "is not one distribution", 30),
    ("tune-no-space", "a sweep without a space file", "tune", "give --space FILE", 10),
    ("prepare-no-source", "an import without its files",
     "data prepare image_folder", "needs --source PATH", 10),
    ("prepare-unknown-source", "a data source no importer is registered for",
     "data prepare npz_folders", "unknown source 'npz_folders'; allowed:", 10),
    ("prepare-one-class", "an image folder that holds a single class",
     "data prepare image_folder --source {tmp}/oneclass --out {runs}/one.arrow",
     "holds one class (cat): a classification data set needs two or more", 10),
    ("prepare-classes", "--classes naming a class the folder does not have",
     "data prepare image_folder --source {tmp}/twoclass --classes cat,cow --out {runs}/c.arrow",
     "--classes names ['cow']", 10),
    ("prepare-strict", "a stray file in an image folder, imported with --strict",
     "data prepare image_folder --source {tmp}/twoclass --strict --out {runs}/s.arrow",
     "--strict: 1 file(s) are no readable images: d/dog/notes.txt", 10),
    ("plugin-missing", "a plugin module that cannot be imported",
     "run --import no_such_plugin", "plugin module 'no_such_plugin' cannot be imported", 5),
    ("plugin-path", "a file path where a plugin's module name belongs",
     "run --import {tmp}/my_method.py", "is not a module name", 5),
    ("run-name-escape", "a run name that climbs out of the output folder",
     "run --set data.partition_dir={part} runtime.output_dir={runs} "
     "runtime.run_name=../../escape", "must be one folder name inside runtime.output_dir", 2),
    ("run-name-nested", "a run name that is a path",
     "run --set runtime.run_name=a/b", "runtime.run_name='a/b' must be one folder name", 2),
    ("nan-lr", "a learning rate that is not a number",
     "run --set train.lr=nan", "train.lr=nan must be a finite number", 2),
    ("clients-per-round", "more clients a round than the partition holds",
     "run --set data.partition_dir={part} runtime.output_dir={runs} "
     "train.clients_per_round=99", "train.clients_per_round=99 but the partition has 3 "
                                   "clients", 2),
    ("backbone-not-weights", "a text file given as the backbone's weights",
     "run --set data.partition_dir={part} runtime.output_dir={runs} backbone.source=file "
     "backbone.name=vit_tiny_patch16_224 backbone.checkpoint={tmp}/weights.safetensors",
     "is not a weights file", 2),
    ("add-method-unknown", "a suite row for a method that is not registered",
     "experiment --quick --add-method fedprx_vpt",
     "--add-method ['fedprx_vpt']: not a registered algorithm", 30),
]


def _write_broken_inputs(tmp: Path, part: Path) -> None:
    (tmp / "bad.yaml").write_text("train: [unclosed\n")
    (tmp / "list.yaml").write_text("- a\n- b\n")
    (tmp / "text.arrow").write_text("hello")
    shard = (part / "client_00000.arrow").read_bytes()
    (tmp / "cut.arrow").write_bytes(shard[: len(shard) // 2])
    (tmp / "sidecar").mkdir()
    (tmp / "sidecar" / "d.arrow").write_bytes(shard)
    (tmp / "sidecar" / "d.json").write_text("{not json")
    for name in ("badjson", "noclients", "corrupt", "empty", "cutrun", "pickled"):
        (tmp / name).mkdir()
    (tmp / "badjson" / "manifest.json").write_text("{")
    manifest = json.loads((part / "manifest.json").read_text())
    (tmp / "noclients" / "manifest.json").write_text(
        json.dumps({k: v for k, v in manifest.items() if k != "clients"}))
    for f in part.iterdir():
        (tmp / "corrupt" / f.name).write_bytes(f.read_bytes())
    raw = bytearray((tmp / "corrupt" / "client_00001.arrow").read_bytes())
    raw[-100] ^= 0xFF
    (tmp / "corrupt" / "client_00001.arrow").write_bytes(bytes(raw))
    (tmp / "file.txt").write_text("a file")
    (tmp / "broken").symlink_to(tmp / "nowhere")
    (tmp / "taken").mkdir()
    for run in ("cutrun", "pickled"):
        (tmp / run / "config.yaml").write_text("seed: 0\n")
    (tmp / "cutrun" / "checkpoint.safetensors").write_bytes(b"\x10\x00\x00")
    (tmp / "cutrun" / "checkpoint.prev.safetensors").write_bytes(b"")
    (tmp / "pickled" / "checkpoint.pt").write_bytes(b"\x80\x04K\x01.")
    _lost_pieces(tmp / "lostpieces")
    (tmp / "space.yaml").write_text("space:\n  train.lr: {normal: [0, 1]}\n")
    (tmp / "weights.safetensors").write_text("these are notes, not weights\n")
    _image_folders(tmp)
    _index_partitions(tmp, part)


def _image_folders(tmp: Path) -> None:
    """``oneclass/d/cat/``; ``twoclass/d/{cat,dog}/`` with a stray notes.txt."""
    from PIL import Image

    for root, classes in (("oneclass", ["cat"]), ("twoclass", ["cat", "dog"])):
        for c in classes:
            (tmp / root / "d" / c).mkdir(parents=True)
            Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp / root / "d" / c / "0.png")
    (tmp / "twoclass" / "d" / "dog" / "notes.txt").write_text("not an image")


def _index_partitions(tmp: Path, part: Path) -> None:
    """Partitions of row numbers into a copy of ``part``'s dataset: ``indexed`` (the
    dataset then cut short) and ``orphan`` (the dataset then deleted)."""
    import shutil

    from rayfed_bpt.data import PartitionConfig, load_dataset, write_partition

    source = Path(json.loads((part / "manifest.json").read_text())["dataset"]["path"])
    for name in ("indexed", "orphan"):
        data = tmp / name / "datasets" / "d.arrow"
        data.parent.mkdir(parents=True)
        shutil.copy(source, data)
        shutil.copy(source.with_suffix(".json"), data.with_suffix(".json"))
        write_partition(load_dataset(data), PartitionConfig("iid", num_clients=3, seed=0),
                        tmp / name / "partitions" / "p")
    cut = tmp / "indexed" / "datasets" / "d.arrow"
    cut.write_bytes(cut.read_bytes()[:-4096])
    shutil.rmtree(tmp / "orphan" / "datasets")


def _lost_pieces(run: Path) -> None:
    """A checkpoint whose one client's personal state (a piece under personal/) is gone."""
    import shutil

    import torch

    from rayfed_bpt.engine.checkpoint import save_checkpoint
    from rayfed_bpt.engine.personal_store import PersonalStore
    from rayfed_bpt.engine.state import RunState

    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    store = PersonalStore([0])
    store.put(0, {"head": torch.zeros(2)})
    save_checkpoint(run, RunState(1, {"w": torch.zeros(1)}, store), {"seed": 0})
    shutil.rmtree(run / "personal")


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def broken(digits4_path, tmp_path_factory):
    from rayfed_bpt.data import PartitionConfig, load_dataset, write_partition

    tmp = tmp_path_factory.mktemp("bad")
    part = write_partition(load_dataset(digits4_path),
                           PartitionConfig("domain_mix", num_clients=3, seed=0),
                           tmp_path_factory.mktemp("good") / "p3", layout="files")
    _write_broken_inputs(tmp, part)
    return tmp, part


def run_case(command: str, tmp: Path, part: Path, runs: Path, timeout: float):
    args = command.format(tmp=tmp, part=part, runs=runs).split()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "rayfed_bpt.cli", *args], capture_output=True,
                       text=True, timeout=max(120, 3 * timeout), env=env, cwd=runs.parent)
    return r, time.time() - t


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_message(case, broken, tmp_path):
    name, _, command, expect, seconds = case
    tmp, part = broken
    runs = tmp_path / "runs"
    before = _snapshot(tmp)
    r, took = run_case(command, tmp, part, runs, seconds)
    assert r.returncode == 2, (r.returncode, r.stdout[-1500:], r.stderr[-1500:])
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    errors = [x for x in r.stderr.splitlines() if x.startswith("rayfed-bpt: error:")]
    assert len(errors) == 1 and expect in errors[0], r.stderr[-3000:]
    assert took < seconds, f"{name} took {took:.1f}s"
    # no run folder, no MLflow store (here or in the default ./rayfed_runs): nothing half made
    assert not runs.exists() and not (tmp_path / "rayfed_runs").exists()
    assert _snapshot(tmp) == before  # and nothing changed among the inputs


@pytest.mark.parametrize("code", [401, 403])
def test_a_tracking_server_that_refuses_says_check_credentials(code, tmp_path, monkeypatch):
    """A server behind auth answers /health with 401/403: that is not "reachable" (the run
    would fail later, in the driver); with the right token it is."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from rayfed_bpt.errors import ConfigError
    from rayfed_bpt.tracking import check_tracking_uri

    class Guarded(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            ok = self.headers.get("Authorization") == "Bearer right-token"
            self.send_response(200 if ok else code)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Guarded)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
        with pytest.raises(ConfigError, match=f"refused the request \\(HTTP {code}\\): check "
                                              "credentials"):
            check_tracking_uri(uri)
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "right-token")
        check_tracking_uri(uri)  # the client's credentials go with the check
    finally:
        server.shutdown()


def test_a_checkpoint_left_half_written_by_a_hard_crash_is_swept(tmp_path):
    from rayfed_bpt.engine.checkpoint import CheckpointWriter

    (tmp_path / ".checkpoint.x1y2.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "keep.tmp").write_bytes(b"not ours")
    CheckpointWriter(tmp_path, {}, every=1, rounds=2)  # what a (resumed) run starts with
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.tmp"]


def test_the_catalogue_lists_every_case_with_its_message():
    doc = DOC.read_text()
    rows = re.findall(r"^\| `([\w-]+)` \|", doc, flags=re.M)
    assert rows == [c[0] for c in CASES]
    assert len(rows) >= 25
    for name, _, _, expect, _ in CASES:
        line = next(x for x in doc.splitlines() if x.startswith(f"| `{name}` |"))
        assert expect.replace("|", "\\|") in line, name


if __name__ == "__main__":  # regenerate docs/errors.md from the real messages
    import tempfile

    from rayfed_bpt.data import PartitionConfig, ensure_builtin, load_dataset, write_partition

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    root = Path(tempfile.mkdtemp(prefix="rfbpt-errors-"))
    os.environ["RAYFED_BPT_DATA"] = str(root / "data")
    part = write_partition(load_dataset(ensure_builtin()),
                           PartitionConfig("domain_mix", num_clients=3, seed=0), root / "p3",
                           layout="files")
    tmp = root / "bad"
    tmp.mkdir()
    (root / "cwd").mkdir()
    _write_broken_inputs(tmp, part)
    print("| case | bad input | command | message (exit status 2) |\n|---|---|---|---|")
    for name, what, command, _, seconds in CASES:
        r, _ = run_case(command, tmp, part, root / "cwd" / "runs", seconds)
        msg = next((x for x in r.stderr.splitlines() if x.startswith("rayfed-bpt: error:")),
                   r.stderr.strip().splitlines()[-1])
        for path, label in ((str(tmp), "<tmp>"), (str(part), "<partition>"),
                            (str(root / "cwd" / "runs"), "<runs>")):
            msg, command = msg.replace(path, label), command.replace(path, label)
        msg = msg.replace("|", "\\|")
        cmd = command.format(tmp="<tmp>", part="<partition>", runs="<runs>")
        print(f"| `{name}` | {what} | `rayfed-bpt {cmd}` | {msg} |")
