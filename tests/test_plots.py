"""Every method of a figure is drawn distinctly: read back from the drawn artists."""

from __future__ import annotations

from itertools import combinations
from types import SimpleNamespace

import pytest
from matplotlib.colors import to_hex

from rayfed_bpt.experiments import plots
from rayfed_bpt.experiments.style import FIXED, PALETTE, styles

METHODS = [*FIXED, "fedprox_vpt", "my_variant", "another_plugin_method"]


@pytest.fixture
def drawn(monkeypatch):
    """The (figure, axes) each plot function hands to _save, kept open."""
    kept = []
    monkeypatch.setattr(plots, "_save", lambda fig, ax, *a, **k: kept.append((fig, ax)))
    yield kept
    plots._plt().close("all")


def looks(ax) -> dict[str, tuple]:
    """legend label -> what tells it apart: (colour, marker, line style) of a line,
    (colour, hatch) of a bar."""
    out = {}
    for line in ax.get_lines():
        if not line.get_label().startswith("_"):
            out[line.get_label()] = (to_hex(line.get_color()), line.get_marker(),
                                     line.get_linestyle())
    from matplotlib.container import BarContainer

    for bars in ax.containers:
        if not isinstance(bars, BarContainer):
            continue  # (the error bars)
        p = bars.patches[0]
        out[bars.get_label()] = (to_hex(p.get_facecolor()), p.get_hatch())
    return out


def assert_distinct(ax, n: int) -> None:
    seen = looks(ax)
    assert len(seen) == n
    for (a, sa), (b, sb) in combinations(seen.items(), 2):
        assert sa != sb, f"{a} and {b} are drawn alike: {sa}"
        if len(sa) == 3:  # a line: colour + marker alone must tell them apart
            assert sa[:2] != sb[:2], f"{a} and {b}: {sa}"


def test_the_headline_draws_every_method_distinctly(drawn, tmp_path):
    suite = SimpleNamespace(name="t", methods=METHODS, seeds=(0,))
    per = {s: {m: {"acc_ms": (0.5 + i / 100, 0.01)} for i, m in enumerate(METHODS)}
           for s in ("a", "b")}
    plots.plot_headline(tmp_path / "h.png", suite, per)
    assert_distinct(drawn[0][1], len(METHODS))


def test_curves_and_domain_bars_draw_every_method_distinctly(drawn, tmp_path):
    suite = SimpleNamespace(name="t", methods=METHODS, seeds=(0,))
    main = [{"setting": "s", "method": m, "seed": 0,
             "history": [{"round": r, "acc_mean": 0.5 + r / 10} for r in (1, 2)]}
            for m in METHODS]
    plots.plot_curves(tmp_path / "c.png", suite, main, "s", "curves")
    rows = [{"method": m, "domains": {"d0": (0.6, 0.01), "d1": (0.7, 0.02)}} for m in METHODS]
    plots.plot_domains(tmp_path / "d.png", rows, "domains")
    for _, ax in drawn:
        assert_distinct(ax, len(METHODS))


def test_a_method_keeps_its_style_whatever_else_a_figure_holds():
    alone = styles(["pfedbayespt", "fedprox_vpt"])
    crowded = styles(METHODS)
    assert alone["pfedbayespt"] == crowded["pfedbayespt"] == FIXED["pfedbayespt"]
    assert alone["fedprox_vpt"] == crowded["fedprox_vpt"]  # (no other name took its slot)
    assert {s.color for s in crowded.values()} <= set(PALETTE.values())
