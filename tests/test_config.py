"""Config: YAML, dotted overrides, and clear errors for unknown keys and bad values."""

import pytest

from rayfed_bpt.config import load_config
from rayfed_bpt.errors import ConfigError


def test_defaults_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 3\ntrain:\n  rounds: 7\n  lr: 1e-3\nalgorithm:\n  name: fedavg_vpt\n")
    cfg = load_config(f, ["train.rounds=2", "algorithm.options.prompt_len=4",
                          "data.label_alpha=0.1"])
    assert cfg.seed == 3 and cfg.train.rounds == 2 and cfg.train.lr == 1e-3
    assert cfg.algorithm.options == {"prompt_len": 4} and cfg.data.label_alpha == 0.1
    assert load_config().algorithm.name == "pfedbayespt"


@pytest.mark.parametrize(
    "overrides, msg",
    [
        (["trian.rounds=3"], r"unknown config key\(s\) \['trian'\].*allowed under the top level"),
        (["train.roundz=3"], r"\['train.roundz'\].*allowed under train.*'rounds'"),
        (["train.rounds=0"], "train.rounds must be >= 1"),
        (["train.rounds=two"], "train.rounds='two' must be an integer"),
        (["train.lr=-1"], "train.lr must be > 0"),
        (["algorithm.name=fedprox"], "unknown algorithm.name 'fedprox'; allowed: .*pfedbayespt"),
        (
            ["algorithm.options.betta=1"],
            r"unknown config key\(s\) \['algorithm.options.betta'\].*'beta'.*"
            r"algorithm pfedbayespt",
        ),
        (
            ["algorithm.options.noise=uniform"],
            "noise='uniform'; allowed: \\['bernoulli', 'gaussian'\\]",
        ),
        (["algorithm.options.J=-1"], r"options.J must lie in \[0, 1024\], got -1"),
        (["backbone.source=hub"], "backbone.source='hub'; allowed"),
        (["rounds"], "is not KEY=VALUE"),
    ],
)
def test_bad_config_is_rejected_with_the_key(overrides, msg):
    with pytest.raises(ConfigError, match=msg):
        cfg = load_config(None, overrides)
        # option ranges are checked when the algorithm is built
        from rayfed_bpt.algorithms import create_algorithm
        from rayfed_bpt.models import PromptedViT, create_backbone

        create_algorithm(
            cfg.algorithm.name, PromptedViT(create_backbone()), 10, cfg.train, cfg.algorithm.options
        )


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("old, new", [("data.beta", "data.domain_alpha"),
                                      ("data.alpha", "data.label_alpha"),
                                      ("data.partition_seed", "data.seed")])
def test_renamed_keys_name_the_new_one(old, new):
    with pytest.raises(ConfigError, match=f"{old} was renamed {new}: write {new}=0.3"):
        load_config(None, [f"{old}=0.3"])


def test_each_default_is_written_once_and_cli_and_docs_agree():
    """The schema is the one owner: docs/config.md is its table, and every CLI option
    derived from it carries the schema's default, type and help."""
    import dataclasses
    from pathlib import Path

    import rayfed_bpt.cli  # noqa: F401 - registers the commands
    from rayfed_bpt.cli_parser import _COMMANDS, build_parser
    from rayfed_bpt.config import BackboneConfig, ExperimentConfig, PartitionConfig
    from rayfed_bpt.config_reference import reference_markdown, schema_keys

    doc = (Path(__file__).resolve().parent.parent / "docs" / "config.md").read_text()
    assert reference_markdown() in doc, "regenerate: rayfed-bpt config --reference"
    keys = schema_keys()
    assert len(keys) == len({k for k, *_ in keys}) and all(h for *_, h in keys)
    defaults = ExperimentConfig().to_dict()
    for key, default, _, _ in keys:  # every key's default is the schema's own
        node = defaults
        for part in key.split("."):
            node = node[part]
        assert node == default, key
    parser = build_parser()
    sub = {a.dest: a for a in parser._subparsers._group_actions}["command"]
    for name, schema in (("data partition", PartitionConfig), ("backbone probe", BackboneConfig)):
        group, leaf = name.split()
        cmd = {a.dest: a for a in sub.choices[group]._subparsers._group_actions}
        options = {a.dest: a for a in cmd[f"{group}_command"].choices[leaf]._actions}
        for f in dataclasses.fields(schema):
            assert options[f.name].default == f.default, (name, f.name)
            assert f.metadata["help"] in options[f.name].help
            assert options[f.name].option_strings == [f"--{f.name.replace('_', '-')}"]
    assert "data partition" in _COMMANDS and "config" in _COMMANDS
