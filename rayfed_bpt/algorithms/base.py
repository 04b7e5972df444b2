"""The one small interface every algorithm implements.

An algorithm says what a client trains and sends (``local_update``), how the
server aggregates (``aggregate``), what stays personal (``personal_prefixes``)
and how a client predicts (``predict``). States are plain ``dict[str, Tensor]``
on the CPU, so any runtime (a loop here, Ray actors in ``rayfed_bpt.runtime``)
can move them. ``local_update`` takes a *group* of clients, so a runtime can
batch several clients' steps into one pass without changing callers. The data it
sees is in ``client.py``, a client's kept optimizer state in ``optim_state.py``.

All randomness comes from ``torch.Generator`` objects seeded by
``seed_for(seed, round, client)``: results do not depend on which process or
in which order clients are trained.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..catalog import NoOptions, preset_of
from ..config import TrainConfig, from_dict
from ..models import PromptedViT
from .client import ClientData, ClientResult, ClientTask, Phase, State, make_generator, seed_for
from .optim_state import OPTIM, load_optimizer, save_optimizer

__all__ = ["OPTIM", "Algorithm", "ClientData", "ClientResult", "ClientTask", "Phase", "State",
           "make_generator", "seed_for"]


class Algorithm:
    """Base class. Subclasses set ``name`` and ``Options`` and build their modules."""

    name: ClassVar[str] = ""

    Options: ClassVar[type] = NoOptions  # a dataclass of knobs (rayfed_bpt.catalog)

    #: parameter-name prefixes that stay with the client ("" = everything)
    personal_prefixes: ClassVar[tuple[str, ...]] = ()

    #: images an evaluation (or feature) pass takes at once; a GPU actor sizes it from its
    #: memory budget (``engine.budget``)
    eval_chunk: int = 256

    def __init__(
        self,
        backbone: PromptedViT,
        num_classes: int,
        train: TrainConfig,
        options: dict | None = None,
        seed: int = 0,
        num_clients: int = 1,
    ):
        self.backbone = backbone
        self.num_classes = num_classes
        self.train_cfg = train
        self.opts = from_dict(self.Options, options or {}, "algorithm.options")
        self.seed = seed
        self.num_clients = num_clients
        self._init: State | None = None
        self.device = backbone.device

    # ----- state ---------------------------------------------------------------------------
    def build_module(self) -> nn.Module:
        raise NotImplementedError

    def is_personal(self, key: str) -> bool:
        return any(key.startswith(p) for p in self.personal_prefixes)

    @property
    def has_global_model(self) -> bool:
        """False when a prediction needs personal state (then no pooled global accuracy)."""
        return not self.personal_prefixes

    def initial_state(self) -> State:
        """The initial weights, seeded by the algorithm's family (its class), not by a
        preset's name: an ablation starts from the full method's values wherever their
        parameters agree, and a parameter the preset reshaped (gaussian_vi's first layer,
        without noise inputs) takes the full method's values on the part they share. So a
        paired difference between a method and its ablation holds no init noise."""
        if self._init is None:
            own = self._seeded_state(self.opts)
            preset = preset_of(self.name)
            if preset:
                defaults = type(self).Options()
                full = self._seeded_state(
                    replace(self.opts, **{k: getattr(defaults, k) for k in preset}))
                own = {k: _overlay(v, full.get(k)) for k, v in own.items()}
            self._init = own
        return self._init

    def _seeded_state(self, opts) -> State:
        saved, self.opts = self.opts, opts  # build_module reads self.opts
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed_for(self.seed, "init", type(self).name))
                return {k: v.detach().clone()
                        for k, v in self.build_module().state_dict().items()}
        finally:
            self.opts = saved

    def model_params(self) -> int:
        """Every learned number of the model, shared and personal (what a client trains;
        the cost column beside a score)."""
        return sum(v.numel() for v in self.initial_state().values())

    def backbone_passes(self, options: dict | None = None) -> int:
        """Frozen-backbone passes per predicted image under test-time ``options`` (the
        feature pass e(x) counts): one for a prompt or a head on the features."""
        return 1

    def init_global(self) -> State:
        return {k: v.clone() for k, v in self.initial_state().items() if not self.is_personal(k)}

    def init_personal(self, client_id: int) -> State:
        return {k: v.clone() for k, v in self.initial_state().items() if self.is_personal(k)}

    def load(self, global_state: State, personal: State) -> nn.Module:
        module = self.build_module()
        weights = {k: v for k, v in personal.items() if not k.startswith(OPTIM)}
        module.load_state_dict({**global_state, **weights}, strict=True)
        return module.to(self.device)

    def split(self, module: nn.Module) -> tuple[State, State]:
        state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        shared = {k: v for k, v in state.items() if not self.is_personal(k)}
        personal = {k: v for k, v in state.items() if self.is_personal(k)}
        return shared, personal

    # ----- client side ---------------------------------------------------------------------
    def features(self, data: ClientData, split: str) -> torch.Tensor:
        """Cached prompt-free features e(x): the frozen backbone never changes them."""
        key = f"feat_{split}"
        if key not in data.cache:
            idx = np.arange(data.num(split))
            data.cache[key] = (
                torch.cat(
                    [
                        self.backbone.features(data.x(split, idx[i : i + self.eval_chunk],
                                                      self.backbone))
                        for i in range(0, len(idx), self.eval_chunk)
                    ]
                )
                if len(idx)
                else torch.zeros(0, self.backbone.embed_dim, device=self.device)
            )
        return data.cache[key]

    def step_inputs(
        self,
        module: nn.Module,
        data: ClientData,
        idx: torch.Tensor,
        gen: torch.Generator,
        round: int,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, Any]:
        """One local step up to the frozen backbone: its images (None: no backbone pass),
        their per-image prompts, and what ``step_loss`` needs. Split here so that several
        clients' steps can share one batched backbone pass (``local_update``)."""
        raise NotImplementedError

    def step_loss(
        self, module: nn.Module, feats: torch.Tensor | None, rest: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The rest of the step from the backbone's features: the loss and its parts."""
        raise NotImplementedError

    def loss(
        self, module: nn.Module, data: ClientData, idx: torch.Tensor, gen: torch.Generator,
        round: int,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One client's loss on the examples ``idx``."""
        x, prompt, rest = self.step_inputs(module, data, idx, gen, round)
        return self.step_loss(module, None if x is None else self.backbone(x, prompt), rest)

    def phases(self, module: nn.Module) -> list[Phase]:
        """What a client trains, in order (FedRep: the head, then the prompt)."""
        return [Phase(list(module.parameters()), self.train_cfg.local_epochs)]

    def before_training(self, module: nn.Module, data: ClientData) -> None:
        """Set a client's module up before its phases (pFedPG: its generated prompt)."""

    def local_update(self, global_state: State, tasks: list[ClientTask]) -> list[ClientResult]:
        """Train ``tasks``' clients from ``global_state``: as one group, every step of the
        group's clients sharing one pass through the frozen backbone. Each client keeps its
        own module, optimizer, generator, data order and step count, so a group of G
        gives what G separate updates give (to float rounding of the batched pass)."""
        gens = [make_generator(self.seed, "train", t.round, t.client_id) for t in tasks]
        modules = [self.load(global_state, t.personal) for t in tasks]
        metrics: list[dict[str, float]] = [{} for _ in tasks]
        for m, t in zip(modules, tasks):
            m.train()
            self.before_training(m, t.data)
        plans = [self.phases(m) for m in modules]
        # train.optimizer_state=keep: each client's Adam state rides in its personal state
        kept = ([{k: v for k, v in t.personal.items() if k.startswith(OPTIM)} for t in tasks]
                if self.train_cfg.optimizer_state == "keep" else None)
        for j in range(len(plans[0])):
            phase = [p[j] for p in plans]
            with trainable_only(modules, [p.params for p in phase]):
                out = self.run_group(modules, [t.data for t in tasks], phase, gens,
                                     tasks[0].round, kept, f"{OPTIM}{j}.")
            for acc, o, p in zip(metrics, out, phase):
                acc.update({f"{p.prefix}{k}": v for k, v in o.items()})
        results = []
        for i, (t, m, acc) in enumerate(zip(tasks, modules, metrics)):
            shared, personal = self.split(m)
            if kept is not None:
                personal.update(kept[i])
            results.append(ClientResult(t.client_id, t.data.num("train"), shared, personal, acc))
        return results

    def run_group(self, modules: list[nn.Module], datas: list[ClientData], phases: list[Phase],
                  gens: list[torch.Generator], round: int, kept: list[State] | None = None,
                  key: str = "") -> list[dict[str, float]]:
        """Minibatch Adam for each client over its phase's params and epochs, in lockstep:
        step t of every client still training goes through the backbone as one batch.
        With ``kept`` (one flat state per client), each optimizer starts from the entries
        under ``key`` and writes its state back there when the phase ends."""
        bs = self.train_cfg.batch_size
        opts = [torch.optim.Adam(p.params, lr=self.train_cfg.lr,
                                 weight_decay=self.train_cfg.weight_decay)
                if p.params and p.epochs else None for p in phases]
        if kept is not None:
            for o, flat in zip(opts, kept):
                if o is not None:
                    load_optimizer(o, flat, key)
        batches = [_batches(d.num("train"), bs, p.epochs, g)
                   for d, p, g in zip(datas, phases, gens)]
        ahead = [d.reads_ahead(self.backbone) for d in datas]
        sums: list[dict[str, torch.Tensor]] = [{} for _ in modules]
        steps = [0] * len(modules)
        active = [g for g, o in enumerate(opts) if o is not None]
        while active:
            step = [(g, *b) for g in active if (b := next(batches[g], None)) is not None]
            inputs = [self.step_inputs(modules[g], datas[g], idx, gens[g], round)
                      for g, idx, _ in step]
            for g, _, upcoming in step:
                if ahead[g] and upcoming is not None:
                    datas[g].prefetch("train", upcoming)
            feats = self._backbone_group([(x, p) for x, p, _ in inputs])
            losses = []
            for (g, _, _), (_, _, rest), f in zip(step, inputs, feats):
                loss, parts = self.step_loss(modules[g], f, rest)
                losses.append(loss)
                for k, v in {"loss": loss, **parts}.items():  # float64 running sums
                    sums[g][k] = sums[g].get(k, 0.0) + v.detach().double()
                steps[g] += 1
                opts[g].zero_grad(set_to_none=True)
            if losses:
                torch.stack(losses).sum().backward()  # disjoint graphs: each its own grads
            for g, _, _ in step:
                opts[g].step()
            active = [g for g, _, _ in step]
        if kept is not None:
            for o, flat in zip(opts, kept):
                if o is not None:
                    flat.update(save_optimizer(o, key))
        return [{k: float(v) / n for k, v in s.items()} for s, n in zip(sums, steps)]

    def _backbone_group(self, pairs: list[tuple]) -> list[torch.Tensor | None]:
        """One backbone pass over every step's images (each with its own prompts)."""
        if not pairs or pairs[0][0] is None:
            return [None] * len(pairs)
        if len(pairs) == 1:
            return [self.backbone(*pairs[0])]
        feats = self.backbone(torch.cat([x for x, _ in pairs]),
                              torch.cat([p for _, p in pairs]))
        return list(feats.split([len(x) for x, _ in pairs]))

    # ----- server side ---------------------------------------------------------------------
    def aggregate(self, global_state: State, results: list[ClientResult], round: int) -> State:
        """Sample-weighted mean of what the clients sent."""
        if not results:
            return global_state
        total = sum(r.num_samples for r in results)
        new = dict(global_state)
        for key in results[0].update:
            new[key] = sum(r.update[key].double() * (r.num_samples / total) for r in results).to(
                global_state[key].dtype
            )
        return new

    # ----- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self, module: nn.Module, data: ClientData, split: str, gen: torch.Generator
    ) -> torch.Tensor:
        """Class probabilities (N, C) for ``data``'s ``split``."""
        raise NotImplementedError

    @torch.no_grad()
    def predict_client(
        self, global_state: State, personal: State, data: ClientData, split: str, round: int
    ) -> torch.Tensor:
        module = self.load(global_state, personal)
        module.eval()
        gen = make_generator(self.seed, "eval", round, data.client_id)
        return self.predict(module, data, split, gen).cpu()

    def randn(self, shape, gen: torch.Generator) -> torch.Tensor:
        """Gaussian noise drawn on the CPU from ``gen`` (same numbers on any device)."""
        return torch.randn(shape, generator=gen).to(self.device)


def _overlay(own: torch.Tensor, full: torch.Tensor | None) -> torch.Tensor:
    """``own`` with the full method's initial values wherever the two overlap."""
    if full is None or full.dim() != own.dim():
        return own
    if full.shape == own.shape:
        return full.clone()
    out = own.clone()
    part = tuple(slice(0, min(a, b)) for a, b in zip(own.shape, full.shape))
    out[part] = full[part]
    return out


def _batches(n: int, bs: int, epochs: int, gen: torch.Generator):
    """A client's minibatch indices, each with the next one of its epoch (None at the
    epoch's end: to read ahead); each epoch's permutation drawn only when that epoch
    starts: its generator is consumed in exactly the order of a lone client's loop."""
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, bs):
            yield perm[i : i + bs], (perm[i + bs : i + 2 * bs] if i + bs < n else None)


@contextmanager
def trainable_only(modules: list[nn.Module], params: list[list[nn.Parameter]]):
    """Gradients only into each module's ``params`` for a phase (FedRep: the head alone,
    then the prompt alone), then back to what it was."""
    saved = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    for m, keep in zip(modules, params):
        ids = {id(p) for p in keep}
        for p in m.parameters():
            p.requires_grad_(id(p) in ids)
    try:
        yield
    finally:
        for p, r in saved:
            p.requires_grad_(r)
