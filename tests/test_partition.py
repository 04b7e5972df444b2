"""Partitioners: properties checked by counting, independent of how they deal."""

import numpy as np
import pytest

from rayfed_bpt.config import PartitionConfig, from_dict
from rayfed_bpt.data.partition import partition_indices, systematic_round
from rayfed_bpt.errors import ConfigError, DataError

C, D = 10, 4


def synthetic(n=8000, seed=1, test_fraction=0.25):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, n)
    domains = rng.integers(0, D, n)
    is_train = rng.random(n) > test_fraction
    return labels, domains, is_train


def run(**kw):
    labels, domains, is_train = synthetic()
    cfg = PartitionConfig(**kw)
    return cfg, partition_indices(cfg, labels, domains, is_train, C, D), (labels, domains, is_train)


@pytest.mark.parametrize("name", ["iid", "dirichlet", "k_classes", "domain", "domain_mix"])
def test_disjoint_and_split_respecting(name):
    extra = {"label_alpha": 0.5} if name == "dirichlet" else {}
    cfg, part, (labels, domains, is_train) = run(partitioner=name, num_clients=12, **extra)
    train = np.concatenate(part.train)
    test = np.concatenate(part.test)
    assert len(np.unique(train)) == len(train), "a train example went to two clients"
    assert len(np.unique(test)) == len(test), "a test example went to two clients"
    assert is_train[train].all() and not is_train[test].any()
    assert all(len(t) >= cfg.min_samples for t in part.train)
    if name in ("iid", "dirichlet", "domain_mix"):  # these use every training example
        assert len(train) == is_train.sum()


def test_iid_is_balanced():
    _, part, _ = run(partitioner="iid", num_clients=7)
    sizes = [len(t) for t in part.train]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_alpha_controls_label_skew():
    def skew(label_alpha):
        _, part, (labels, _, _) = run(
            partitioner="dirichlet", num_clients=10, label_alpha=label_alpha, min_samples=1
        )
        # mean over clients of the largest label share
        return np.mean([np.bincount(labels[t], minlength=C).max() / len(t) for t in part.train])

    assert skew(0.1) > skew(1.0) > skew(100.0)
    assert skew(100.0) < 0.2  # near uniform over 10 labels


def test_k_classes_gives_exactly_k_labels():
    _, part, (labels, _, _) = run(partitioner="k_classes", num_clients=10, k=3)
    for t in part.train:
        assert len(np.unique(labels[t])) == 3


def test_domain_gives_one_domain_per_client():
    _, part, (_, domains, _) = run(partitioner="domain", num_clients=8)
    seen = [np.unique(domains[t]) for t in part.train]
    assert all(len(s) == 1 for s in seen)
    assert sorted({int(s[0]) for s in seen}) == list(range(D))  # all domains covered


def test_domain_mix_holds_several_domains_and_beta_controls_it():
    def domains_per_client(domain_alpha):
        _, part, (_, domains, _) = run(partitioner="domain_mix", num_clients=10,
                                            domain_alpha=domain_alpha)
        shares = [np.bincount(domains[t], minlength=D) / len(t) for t in part.train]
        return np.mean([(s > 0.05).sum() for s in shares])

    assert domains_per_client(100.0) == D  # near-even mixes: every domain present
    assert domains_per_client(0.1) < domains_per_client(100.0)
    assert domains_per_client(0.5) > 1.5  # intra-client mixing by default


def test_domain_mix_with_label_alpha_skews_labels():
    def label_skew(label_alpha):
        _, part, (labels, _, _) = run(
            partitioner="domain_mix", num_clients=10, label_alpha=label_alpha, min_samples=1
        )
        return np.mean([np.bincount(labels[t], minlength=C).max() / len(t) for t in part.train])

    assert label_skew(0.1) > label_skew(None) + 0.2


def test_every_client_gets_test_examples_even_when_tiny():
    labels, domains, is_train = synthetic(n=6000)
    cfg = PartitionConfig("domain_mix", num_clients=400, min_samples=5)
    part = partition_indices(cfg, labels, domains, is_train, C, D)
    assert min(len(t) for t in part.test) >= 1
    test = np.concatenate(part.test)
    assert len(np.unique(test)) == len(test) and not is_train[test].any()


def test_test_split_follows_client_mix():
    _, part, (labels, domains, _) = run(
        partitioner="domain_mix", num_clients=6, domain_alpha=0.3, label_alpha=0.5
    )
    for tr, te in zip(part.train, part.test):
        cells_tr = np.bincount(domains[tr] * C + labels[tr], minlength=C * D) / len(tr)
        cells_te = np.bincount(domains[te] * C + labels[te], minlength=C * D) / len(te)
        assert set(np.flatnonzero(cells_te)) <= set(np.flatnonzero(cells_tr))
        assert np.abs(cells_tr - cells_te).sum() < 0.35  # total variation *2 small


def test_same_seed_same_partition_other_seed_differs():
    _, a, _ = run(partitioner="dirichlet", label_alpha=0.5, num_clients=5, seed=3)
    _, b, _ = run(partitioner="dirichlet", label_alpha=0.5, num_clients=5, seed=3)
    _, c, _ = run(partitioner="dirichlet", label_alpha=0.5, num_clients=5, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a.train + a.test, b.train + b.test))
    assert not all(np.array_equal(x, y) for x, y in zip(a.train, c.train))


def test_systematic_round_is_exact_in_sum_and_unbiased():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.dirichlet(np.ones(7))
        n = int(rng.integers(0, 100))
        counts = systematic_round(p, n, rng)
        assert counts.sum() == n
        assert np.all(np.abs(counts - p * n) < 1)
    p = np.array([0.05, 0.05, 0.9])  # small shares are not always rounded away
    mean = np.mean([systematic_round(p, 3, rng) for _ in range(20000)], axis=0)
    assert np.allclose(mean, p * 3, atol=0.02)


def test_min_samples_unreachable_is_a_clear_error_not_a_loop():
    with pytest.raises(DataError, match="could not give every one of 50 clients at least 100"):
        run(partitioner="dirichlet", num_clients=50, label_alpha=0.05, min_samples=100,
            max_draws=5)


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(partitioner="dirichlet", label_alpha=0.0), "label_alpha must be > 0"),
        (dict(partitioner="dirichlet", label_alpha=-1.0), "label_alpha must be > 0"),
        (dict(domain_alpha=0.0), "domain_alpha must be > 0"),
        (dict(num_clients=0), "num_clients must be >= 1"),
    ],
)
def test_bad_options(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        PartitionConfig(**kw)


def test_unknown_partitioner_names_the_registered_ones():
    with pytest.raises(ConfigError, match=r"unknown partitioner 'nope'.*'domain_mix'"):
        run(partitioner="nope")


def test_unknown_option_names_allowed_ones():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['data.alhpa'\].*label_alpha"):
        from_dict(PartitionConfig, {"partitioner": "dirichlet", "alhpa": 0.1}, "data")


def test_more_clients_than_examples():
    labels, domains, is_train = synthetic(n=40)
    with pytest.raises(DataError, match="clients but only .* training examples"):
        partition_indices(
            PartitionConfig(partitioner="iid", num_clients=100, min_samples=0),
            labels,
            domains,
            is_train,
            C,
            D,
        )


def test_recipes_that_differ_anywhere_get_their_own_folders(digits4_path, data_root):
    """`rayfed-bpt run --set data.min_samples=3` after a default run: its own folder, not
    "already exists with another config" (the folder name hashes the whole recipe)."""
    from rayfed_bpt.config import DataConfig
    from rayfed_bpt.data.recipe import resolve_partition

    base = {"dataset": str(digits4_path), "num_clients": 4}
    a = resolve_partition(DataConfig(**base), 0)
    b = resolve_partition(DataConfig(**base, min_samples=3), 0)
    c = resolve_partition(DataConfig(**base, max_draws=7), 0)
    assert len({a, b, c}) == 3 and a.name.startswith("digits4-domain_mix-da0.5-4c-s0-")
    assert resolve_partition(DataConfig(**base), 0) == a  # the same recipe: reused


def test_a_known_partition_is_reused_without_hashing_its_dataset_again(tmp_path, data_root,
                                                                     digits4_path,
                                                                     monkeypatch):
    """Every start resolves the partition: when the manifest says it was made from this very
    file (same path, size, first and last MiB), the dataset is not read again; a touched
    file is verified in full once, by the start's stamp check (which then records its new
    time)."""
    import os
    import shutil

    from rayfed_bpt.config import DataConfig
    from rayfed_bpt.data import PartitionReader, arrow_io
    from rayfed_bpt.data import dataset as dataset_module
    from rayfed_bpt.data.recipe import resolve_partition

    copy = tmp_path / "d.arrow"
    shutil.copy(digits4_path, copy)
    shutil.copy(digits4_path.with_suffix(".json"), copy.with_suffix(".json"))
    data = DataConfig(dataset=str(copy), num_clients=3)
    first = resolve_partition(data, 0)
    hashed = []
    real = arrow_io.sha256_file

    def counted(path, *a, **k):
        hashed.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(dataset_module, "sha256_file", counted)
    monkeypatch.setattr(arrow_io, "sha256_file", counted)
    assert resolve_partition(data, 0) == first
    PartitionReader(first).verify_stamps()
    assert hashed == []
    st = copy.stat()
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched
    assert resolve_partition(data, 0) == first and hashed == []  # same size and edges
    PartitionReader(first).verify_stamps()  # what every run start checks: hashed in full
    assert hashed == [str(copy)]
    PartitionReader(first).verify_stamps()  # its new time recorded: not again
    assert hashed == [str(copy)]
