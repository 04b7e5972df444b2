"""docs/extending.md runs as written: every code block, in order, in a fresh folder.

The folder gets a copy of ``examples/`` and a virtual environment that sees this
environment's packages (``--system-site-packages``) with rayfed_bpt installed
editable, so that the page's own ``pip install -e examples/fedprox_plugin`` installs
the example package (and its entry point) there, never into the environment the
other tests run in. pip reads no index: everything it needs is already here.

- a ``python`` block whose first line is ``# file: PATH`` is a file of the
  walkthrough: written to PATH, or, where PATH is already there (the example's
  module), checked to be that file, word for word;
- any other ``python`` block runs as a script, every ``bash`` block under
  ``bash -euo pipefail``; each must exit 0;
- the ``bash cluster`` block runs against a two-node cluster in test_cluster.py;
- the ``toml`` snippet must be what the example's pyproject.toml says.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "extending.md"
FENCE = re.compile(r"^( *)```(\w+)([^\n]*)\n(.*?)^\1```[ \t]*$", re.M | re.S)


def code_blocks(path: Path = DOC) -> list[tuple[str, str, str]]:
    """(language, tags, code) of every fenced block, in order (indented ones dedented)."""
    out = []
    for m in FENCE.finditer(path.read_text()):
        indent = len(m.group(1))
        code = "".join(line[indent:] for line in m.group(4).splitlines(keepends=True))
        out.append((m.group(2), m.group(3).strip(), code))
    return out


def venv_with_rayfed(folder: Path) -> dict:
    """A venv over this environment's packages, rayfed_bpt installed editable in it, and
    the env that puts it first on PATH (``pip`` there is the venv's)."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(folder)], check=True, timeout=120)
    pip = folder / "bin" / "pip"
    pip.write_text(f'#!/bin/sh\nexec "{folder}/bin/python" -m pip "$@"\n')
    pip.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PATH=f"{folder / 'bin'}:{env['PATH']}", VIRTUAL_ENV=str(folder),
               PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1",
               RAY_USAGE_STATS_ENABLED="0", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    subprocess.run(["pip", "install", "-q", "--no-deps", "-e", str(REPO)], env=env,
                   check=True, timeout=300, capture_output=True)
    return env


def test_the_page_lists_its_blocks_and_the_toml_is_the_examples():
    blocks = code_blocks()
    langs = [lang for lang, _, _ in blocks]
    assert langs.count("python") >= 5 and langs.count("bash") >= 5
    assert [tags for lang, tags, _ in blocks if lang == "bash" and tags] == ["cluster"]
    [toml] = [code for lang, _, code in blocks if lang == "toml"]
    pyproject = (REPO / "examples" / "fedprox_plugin" / "pyproject.toml").read_text()
    for line in toml.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert line in pyproject, line
    assert set(langs) == {"python", "bash", "toml"}  # nothing the test would not run


@pytest.mark.slow  # about 6 minutes: local Ray runs, a 3-trial sweep, the quick suite
def test_extending_md_runs_block_by_block(tmp_path):
    work = tmp_path / "work"
    shutil.copytree(REPO / "examples", work / "examples",
                    ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build"))
    env = venv_with_rayfed(tmp_path / "venv")
    env["RAYFED_BPT_DATA"] = str(tmp_path / "data")
    for i, (lang, tags, code) in enumerate(code_blocks()):
        if lang == "toml" or tags == "cluster":
            continue
        first = code.splitlines()[0]
        if lang == "python" and first.startswith("# file: "):
            target = work / first.removeprefix("# file: ").strip()
            if target.exists():
                assert target.read_text() == code.split("\n", 1)[1], f"block {i}: {target}"
            else:
                target.write_text(code)
            continue
        cmd = (["python", "-c", code] if lang == "python"
               else ["bash", "-euo", "pipefail", "-c", code])
        r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True,
                           timeout=900)
        assert r.returncode == 0, f"block {i} ({lang}):\n{code}\n{r.stdout[-3000:]}\n" \
                                  f"{r.stderr[-3000:]}"
    # what the page's runs left behind
    assert (work / "suite" / "report" / "figures" / "headline.png").stat().st_size > 0
    runs = [p for p in (work / "rayfed_runs").iterdir() if (p / "config.yaml").exists()]
    assert len(runs) >= 3 and all((p / "checkpoint.safetensors").exists() for p in runs)


# --- every page: its commands parse, its keys exist, its links resolve ------------------

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "cluster" / "README.md",
         REPO / "examples" / "fedprox_plugin" / "README.md"]
LINK = re.compile(r"\]\(([^)\s#]+)(#[^)\s]*)?\)")


def documented_commands(path: Path) -> list[list[str]]:
    """The argv of every ``rayfed-bpt`` command in the page's ``bash`` blocks (continued
    lines joined, comments dropped, one argv per command of a ``&&``/``;``/``|`` chain)."""
    import shlex

    out = []
    for lang, _, code in code_blocks(path):
        if lang != "bash":
            continue
        for line in code.replace("\\\n", " ").splitlines():
            if "rayfed-bpt" not in line:
                continue  # (prose in a block, e.g. "<the server's address>", need not parse)
            words = shlex.split(line, comments=True)
            cmd: list[str] = []
            for w in [*words, ";"]:
                if w in ("&&", ";", "|", "||"):
                    if "rayfed-bpt" in cmd:
                        out.append(cmd[cmd.index("rayfed-bpt") + 1:])
                    cmd = []
                else:
                    cmd.append(w)
    return out


def test_the_readme_is_a_front_door():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for page in ("docs/index.md", "docs/data.md", "docs/running.md", "docs/extending.md"):
        assert f"]({page})" in text, page
    assert "pip install -e \".[dev]\" && rayfed-bpt run" in text
    assert "pip install -e \".[dev]\" && pytest" in text  # .ci/run calls the same command
    assert "pytest" in (REPO / ".ci" / "run").read_text().split("README's test command:")[1]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_of_a_page_resolves(page):
    for target, _ in LINK.findall(page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.name}: a link to {target}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_documented_command_parses_and_its_config_is_valid(page, monkeypatch):
    """Each ``rayfed-bpt`` command of the page is one the CLI takes (its options exist, its
    choices allowed), and a run's ``--config``/``--set`` make a config that passes every
    check before Ray would start: a renamed option or key fails here."""
    import rayfed_bpt.cli  # noqa: F401 - registers the commands
    from rayfed_bpt.catalog import PRESETS
    from rayfed_bpt.cli_parser import build_parser
    from rayfed_bpt.config import load_config

    monkeypatch.syspath_prepend(str(REPO / "examples" / "fedprox_plugin"))  # its plugin
    parser = build_parser()
    for argv in documented_commands(page):
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:
            if e.code == 0:  # --help
                continue
            raise AssertionError(f"{page.name}: rayfed-bpt {' '.join(argv)}") from None
        if getattr(args, "set", None) is None or getattr(args, "resume", None):
            continue
        config = getattr(args, "config", None)
        if config and not ((PRESETS / f"{config}.yaml").exists() or (REPO / config).exists()):
            config = None  # a user's own file (my.yaml, a sweep's best config)
        plugins = [*getattr(args, "imports", []), "rayfed_fedprox"]
        if all(importlib.util.find_spec(m) for m in plugins):  # (not a module the page writes)
            load_config(config, args.set, plugins)


@pytest.mark.slow  # a 2-round Ray run, about 40 s
def test_the_readmes_python_example_runs(digits4_path, tmp_path):
    [code] = [code for lang, _, code in code_blocks(REPO / "README.md") if lang == "python"]
    env = {**os.environ, "RAYFED_BPT_DATA": str(digits4_path.parent.parent)}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    acc, run_dir = r.stdout.strip().splitlines()[-2].split()
    assert 0.0 < float(acc) <= 1.0 and (Path(run_dir) / "checkpoint.safetensors").exists()
    assert "fedavg_vpt" in r.stdout.strip().splitlines()[-1]
