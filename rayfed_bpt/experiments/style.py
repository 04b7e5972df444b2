"""One look per method, the same in every figure: a colour from Okabe and Ito's
colour-blind-safe palette, a marker for lines and a hatch for bars.

matplotlib's default cycle has ten colours and wraps, so in a figure of twelve methods
two of them were drawn alike (pFedBayesPT and the deterministic generator, in the
headline). Here a method's style is keyed by its name: the built-ins have fixed ones
(families share a colour and differ in hatch and marker), any other name (a plugin's
method, a variant) gets one from a reserve pool by a stable hash, moved to the next free
slot if a method of the same figure already holds it. No two methods of one figure
share a colour with a marker, nor a colour with a hatch.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

#: Okabe & Ito (2008), "Color Universal Design": distinguishable under the common
#: colour-vision deficiencies; grey added.
PALETTE = {"orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73", "yellow": "#F0E442",
           "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7",
           "black": "#000000", "grey": "#999999"}


@dataclass(frozen=True)
class Style:
    color: str
    marker: str
    hatch: str | None = None
    linestyle: str = "-"

    def line(self) -> dict:
        """matplotlib keywords of a line of this method."""
        return {"color": self.color, "marker": self.marker, "linestyle": self.linestyle}

    def bar(self) -> dict:
        """matplotlib keywords of a bar of this method (an edge, so light colours show; the
        hatch is drawn in the edge's colour, so a black bar gets a white one)."""
        edge = "white" if self.color == PALETTE["black"] else "black"
        return {"color": self.color, "hatch": self.hatch, "edgecolor": edge, "linewidth": 0.4}


def _s(color: str, marker: str, hatch: str | None = None, linestyle: str = "-") -> Style:
    return Style(PALETTE[color], marker, hatch, linestyle)


#: the built-ins; ablations hatched and dashed, the reference dotted
FIXED: dict[str, Style] = {
    "pfedbayespt": _s("vermillion", "o"),
    "pfedbayespt_det": _s("blue", "D"),
    "pfedbayespt_nocond": _s("sky", "v", "//", "--"),
    "gaussian_vi": _s("purple", "^", "//", "--"),
    "pfedbayespt_beta0": _s("orange", "<", "//", "--"),
    "fedavg_vpt": _s("green", "s"),
    "fedper_vpt": _s("yellow", "P"),
    "fedrep_vpt": _s("yellow", "X", "xx"),
    "local": _s("grey", "x"),
    "fedavg_linear": _s("grey", "h", "\\\\"),
    "fedavg_mlp": _s("blue", "p", "\\\\"),
    "pfedpg": _s("purple", "*"),
    "oracle_domain_vpt": _s("black", "d", "..", ":"),
}
#: what other names draw from: every colour with a hatch and a marker no built-in uses
RESERVE: list[Style] = [Style(c, m, h, "-.") for c in PALETTE.values()
                        for h, m in zip(("++", "oo", "--", "||"), "1234")]


def styles(methods: list[str]) -> dict[str, Style]:
    """The style of each method of one figure (built-ins fixed, others hashed)."""
    out = {m: FIXED[m] for m in methods if m in FIXED}
    taken = {(s.color, s.hatch) for s in out.values()} | {(s.color, s.marker)
                                                          for s in out.values()}
    for m in methods:
        if m in out:
            continue
        i = zlib.crc32(m.encode()) % len(RESERVE)
        for j in range(len(RESERVE)):
            s = RESERVE[(i + j) % len(RESERVE)]
            if (s.color, s.hatch) not in taken and (s.color, s.marker) not in taken:
                break
        else:  # more methods than the reserve (a figure nobody could read anyway)
            s = RESERVE[i]
        out[m] = s
        taken |= {(s.color, s.hatch), (s.color, s.marker)}
    return out
