"""What a person sees while a run goes: one formatter of a round's metrics, shown as a
line per round (job logs, CI, the in-process reference) or as a bar's postfix on a
terminal. Ground floor: plain Python."""

from __future__ import annotations

import sys
from collections.abc import Callable


def round_fields(m: dict) -> dict[str, str]:
    """A round's headline metrics, formatted: loss, validation and test accuracy (mean,
    min), seconds — those the round has."""
    out = {}
    if "train_loss" in m:
        out["loss"] = f"{m['train_loss']:.3f}"
    for p, what in (("val_", "val acc"), ("", "acc")):
        if p + "acc_mean" in m:
            out[what] = f"{m[p + 'acc_mean']:.3f}"
            if p + "acc_mean_ci95" in m:  # a sampled evaluation: its 95 % interval and size
                out[what] += f"±{m[p + 'acc_mean_ci95']:.3f} ({m[p + 'eval_clients']:.0f} clients)"
            out[f"{what} min"] = f"{m[p + 'acc_min']:.3f}"
    if "round_seconds" in m:
        out["s"] = f"{m['round_seconds']:.1f}"
    return out


def round_line(m: dict, rounds: int) -> str:
    """``round 3/10  loss 0.512  acc 0.801  acc min 0.640  (12.3s)``"""
    fields = round_fields(m)
    seconds = fields.pop("s", None)
    parts = [f"round {m['round']}/{rounds}", *(f"{k} {v}" for k, v in fields.items())]
    return "  ".join(parts) + (f"  ({seconds}s)" if seconds else "")


class Display:
    """A progress bar on a terminal, one line per round otherwise. Fed the driver's
    progress (``update``): its status, notes (each shown once) and new rounds."""

    def __init__(self, mode: bool | str, rounds: int, desc: str,
                 log: Callable[[str], None] = lambda s: print(s, flush=True)):
        if mode == "auto":
            mode = True if sys.stdout.isatty() else "lines"
        self.mode, self.rounds, self.log = mode, rounds, log
        self.shown: int | None = None
        self.seen: set[str] = set()
        self.bar = None
        if mode is True:
            from tqdm import tqdm

            self.bar = tqdm(total=rounds, unit="round", desc=desc, dynamic_ncols=True)

    def update(self, p: dict) -> None:
        for note in p["notes"]:
            self.note(note)
        if self.shown is None:  # a (re)started driver reports from its checkpoint's round
            self.shown = p["round"] - len(p["new_rounds"])
        for m in p["new_rounds"]:
            if m["round"] > self.shown and self.mode == "lines":
                self.log(round_line(m, self.rounds))
            self.shown = max(self.shown, m["round"])
        if self.bar is not None:
            self.bar.update(self.shown - self.bar.n)
            last = p["new_rounds"][-1] if p["new_rounds"] else {}
            self.bar.set_postfix({"status": p["status"], **round_fields(last)})

    def note(self, text: str) -> None:
        """Show a note once (a recreated driver may repeat its predecessor's)."""
        if text not in self.seen:
            self.seen.add(text)
            (self.bar.write if self.bar else self.log)(f"note: {text}")

    def restart(self) -> None:
        """A recreated driver reports from its checkpoint's round on."""
        self.shown = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
