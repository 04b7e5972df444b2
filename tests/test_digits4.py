"""The built-in digits-4 benchmark: real, offline, split per domain, deterministic."""

import numpy as np
import pytest

from rayfed_bpt.data.digits4 import BASE_DOMAINS, build_digits4, transform_domain
from rayfed_bpt.errors import ConfigError


def test_four_domains_ten_classes_each_with_test_split(digits4):
    info = digits4.info
    assert info.domain_names == list(BASE_DOMAINS)
    assert info.num_classes == 10 and tuple(info.image_shape) == (32, 32, 3)
    labels, domains, splits = digits4.labels, digits4.domains, digits4.splits
    for d in range(4):
        for split in ("train", "test"):
            m = (domains == d) & (splits == split)
            assert set(np.unique(labels[m])) == set(range(10)), (d, split)
        test_share = ((domains == d) & (splits == "test")).sum() / (domains == d).sum()
        assert 0.18 < test_share < 0.22
    counts = np.bincount(domains)
    assert counts.tolist() == [5000, 1797, 5000, 5000]


def test_domains_look_different(digits4):
    """Feature shift: per-domain mean colour statistics differ clearly."""
    images, domains = digits4.images, digits4.domains
    means = np.array([images[domains == d].reshape(-1, 3).mean(0) for d in range(4)])
    chroma = np.array([images[domains == d].std(axis=-1).mean() for d in range(4)])
    assert chroma[0] == 0 and chroma[1] == 0  # mnist, optdigits are grey
    assert chroma[2] > 5 and chroma[3] > 5  # fonts, mnistm are coloured
    assert np.abs(means[3] - means[0]).max() > 30  # mnistm backgrounds are photos


def test_mnist_and_mnistm_share_split_assignment(digits4):
    """A digit in mnist's test split is in mnistm's test split too: no cross-domain leak."""
    d, s, y = digits4.domains, digits4.splits, digits4.labels
    assert np.array_equal(s[d == 0], s[d == 3]) and np.array_equal(y[d == 0], y[d == 3])


def test_same_seed_same_bytes():
    a, _ = build_digits4(seed=5, fonts_per_class=20)
    b, _ = build_digits4(seed=5, fonts_per_class=20)
    c, _ = build_digits4(seed=6, fonts_per_class=20)
    assert a.equals(b)
    assert not a.equals(c)


@pytest.mark.parametrize("kind", ["rotate", "colour", "noise", "invert", "shift"])
def test_extra_domains(kind):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    y = transform_domain(kind, x, rng)
    assert y.shape == x.shape and y.dtype == np.uint8 and not np.array_equal(x, y)
    if kind == "invert":
        assert np.array_equal(y, 255 - x)


def test_shift_is_drawn_per_image_from_continuous_ranges():
    """The same image shifted twice in one call comes out differently each time (its own
    draw), and the same seed gives the same bytes."""
    x = np.zeros((8, 32, 32, 3), np.uint8)
    x[:, 8:24, 14:18] = 255  # a bar: rotation and hue both show
    a = transform_domain("shift", x, np.random.default_rng(0))
    assert len({im.tobytes() for im in a}) == len(a)
    assert np.array_equal(a, transform_domain("shift", x, np.random.default_rng(0)))
    assert a.reshape(8, -1, 3).mean(1).std(0).max() > 10  # hues differ across images


def test_extra_domain_build_and_bad_name():
    table, info = build_digits4(fonts_per_class=10, extra_domains=["invert"])
    assert info.domain_names[-1] == "invert"
    with pytest.raises(ConfigError, match="unknown extra domains"):
        build_digits4(extra_domains=["sepia"])
