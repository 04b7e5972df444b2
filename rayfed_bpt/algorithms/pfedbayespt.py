"""pFedBayesPT: instance-wise personalized FL by semi-implicit Bayesian prompt tuning.

Per image ``x`` the prompt ``p`` is random, with a semi-implicit posterior:

    eps ~ Bernoulli(0.5)^d_eps  (or N(0, noise_scale^2 I))
    psi = g_phi([e(x); eps])                 implicit mixing layer (a noisy MLP)
    p ~ N(psi, diag sigma^2(x))              explicit layer, noise-free sigma head

Each client maximizes, per example, the SIVI bound with J extra draws

    psi_0..psi_J ~ q_phi(psi | x),  p = psi_0 + sigma(x) * xi
    L = log p(y | x, p) - beta * (log h_hat(p | x) - log p(p)) [/ P]

and the server averages the generator, the sigma head and the head. Prediction
averages the softmax over S prompt samples, or uses the mean prompt.

Options that isolate the parts (registered presets in ``catalog``): ``d_eps = 0`` is
Gaussian (mean-field) VI; ``beta = 0`` a noisy generator without the KL;
``condition: none`` feeds the generator and sigma head a constant instead of e(x)
(what conditioning on x adds); ``sample: false`` trains the mean prompt
deterministically (what the Bayesian part adds). ``log_h: exact`` replaces the J+1
draws by every one of the 2^d_eps Bernoulli atoms (few bits): log h(p|x) is then
exact, and the bound can credit the mixing with up to H(eps) = d_eps log 2 nats
instead of log(J+1). The personal part: ``head: local`` keeps the head with the
client; ``client_prompt`` gives each client an offset of the posterior mean with the
Gaussian KL of its posterior to the global one (pFedBayes-style).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ..catalog import BayesPTOptions
from ..models.generator import ImplicitPromptGenerator, SigmaHead
from ..models.sivi import atoms_first, reparameterize, sivi_diagnostics, sivi_loss
from .base import Algorithm, ClientData


class BayesPromptModule(nn.Module):
    def __init__(self, feat_dim: int, prompt_shape: tuple[int, ...], num_classes: int, opts):
        super().__init__()
        self.prompt_shape = prompt_shape
        P = math.prod(prompt_shape)
        Z = opts.code_dim or P  # where the posterior lives: the prompt, or a code of it
        self.generator = ImplicitPromptGenerator(
            feat_dim,
            Z,
            d_eps=opts.d_eps,
            hidden=opts.hidden,
            rank=opts.rank,
            noise=opts.noise,
            noise_scale=opts.noise_scale,
        )
        if opts.sample:  # the deterministic control has no explicit layer
            self.sigma = SigmaHead(feat_dim, Z, mode=opts.sigma, init_logvar=opts.init_logvar)
        self.head = nn.Linear(prompt_shape[-1], num_classes)
        if opts.prior != "standard":  # (with a code: decoded, the prior is a global prompt)
            self.prior_mean = nn.Parameter(torch.zeros(Z))
        if opts.prior == "learnable_scale":  # made after the rest: their init is unchanged
            self.prior_logvar = nn.Parameter(torch.zeros(Z))
        if opts.client_prompt:  # a client's own shift of the posterior's mean (personal)
            self.client_offset = nn.Parameter(torch.zeros(Z))
        if opts.code_dim:  # made last, so the default (no code) draws the same init
            self.decoder = nn.Linear(Z, P)
            nn.init.zeros_(self.decoder.bias)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The prompt (flat) of a code ``z``: linear, learned, federated like the rest."""
        return self.decoder(z) if hasattr(self, "decoder") else z


class PFedBayesPT(Algorithm):
    name = "pfedbayespt"
    Options = BayesPTOptions  # with its ablations gaussian_vi and pfedbayespt_beta0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        o = self.opts
        self.personal_prefixes = (("head.",) if o.head == "local" else ()) + (
            ("client_offset",) if o.client_prompt else ())

    @property
    def prompt_shape(self) -> tuple[int, ...]:
        return self.backbone.prompt_shape(self.opts.prompt_len, self.opts.deep)

    def build_module(self) -> nn.Module:
        return BayesPromptModule(
            self.backbone.embed_dim, self.prompt_shape, self.num_classes, self.opts
        )

    def backbone_passes(self, options: dict | None = None) -> int:
        """The feature pass e(x), then one prompted pass per sample (one for the mean)."""
        o = replace(self.opts, **(options or {}))
        return 1 + (1 if o.eval_mode == "mean" else o.eval_samples)

    def beta_at(self, round: int) -> float:
        w = self.opts.beta_warmup_rounds
        return self.opts.beta * (min(1.0, (round + 1) / w) if w > 0 else 1.0)

    def conditioning(self, e: torch.Tensor) -> torch.Tensor:
        """What the generator and the sigma head see: e(x), or (``condition: none``, the
        control) a constant of the same shape: same parameters, noise and bound."""
        return torch.zeros_like(e) if self.opts.condition == "none" else e

    def step_inputs(self, module, data: ClientData, idx, gen, round):
        o = self.opts
        x = data.x("train", idx, self.backbone)
        e = self.conditioning(self.features(data, "train")[idx])
        B = len(idx)
        y = data.y("train", idx).to(x.device)
        g = module.generator
        if not o.sample:  # the deterministic control: the mean prompt, no noise
            p = self.shift(module, g(e, g.mean_noise((1, B)))[0])
            rest = (y, p, None, None, 0.0, self.client_term(module, None, data))
            return x, module.decode(p).view(B, *self.prompt_shape), rest
        if o.log_h == "exact":  # every atom: log h(p|x) exact, the drawn atom first
            eps = g.sample_noise((1, B), gen)[0]
            psi = atoms_first(g(e, g.atoms().unsqueeze(1)), g.atom_index(eps))
        else:
            psi = g(e, g.sample_noise((o.J + 1, B), gen))  # (J+1, B, P); psi[0] makes p
        psi = self.shift(module, psi)
        logvar = module.sigma(e)  # (B, P), shared by every psi_j
        xi = self.randn(psi.shape[1:], gen)
        p = reparameterize(psi[0], logvar, xi)  # the prompt, or its code
        rest = (y, p, psi, logvar, self.beta_at(round), self.client_term(module, logvar, data))
        return x, module.decode(p).view(B, *self.prompt_shape), rest

    @staticmethod
    def shift(module, psi: torch.Tensor) -> torch.Tensor:
        """The client's offset of the posterior mean (``client_prompt``), or nothing."""
        return psi + module.client_offset if hasattr(module, "client_offset") else psi

    def client_term(self, module, logvar: torch.Tensor | None, data: ClientData):
        """KL(N(psi + delta, sigma^2) || N(psi, sigma^2)) = sum delta^2 / (2 sigma^2) per
        example, weighted by ``client_kl`` / the client's train count: the client's
        posterior kept near the global one, as in pFedBayes (unit variance without an
        explicit layer). None without ``client_prompt``."""
        if not hasattr(module, "client_offset"):
            return None
        delta2 = module.client_offset ** 2
        per = 0.5 * (delta2 if logvar is None else delta2 * torch.exp(-logvar)).sum(-1)
        return per * (self.opts.client_kl / max(1, data.num("train")))

    def step_loss(self, module, feats, rest):
        y, p, psi, logvar, beta, client = rest
        loss, parts = self._bound(module, feats, y, p, psi, logvar, beta)
        if client is not None:
            term = client.mean()
            loss = loss + term
            parts["client_kl"] = term.detach()
        return loss, parts

    def _bound(self, module, feats, y, p, psi, logvar, beta):
        if psi is None:
            loss = F.cross_entropy(module.head(feats), y)
            parts = {"nll": loss.detach(), "psi_abs_mean": p.detach().abs().mean()}
            if len(p) > 1:
                parts["image_spread"] = p.detach().std(dim=0).mean()
            return loss, parts
        prior_mean = getattr(module, "prior_mean", 0.0)
        prior_logvar = getattr(module, "prior_logvar", 0.0)
        loss, parts = sivi_loss(module.head(feats), y, p, psi, logvar, beta, prior_mean,
                                per_dim=self.opts.kl_per_dim, prior_logvar=prior_logvar)
        return loss, {**parts, **sivi_diagnostics(psi, logvar, p)}

    @torch.no_grad()
    def predict(self, module, data: ClientData, split: str, gen) -> torch.Tensor:
        """The softmax averaged over S prompt samples."""
        o = self.opts
        feats = self.features(data, split)
        out = []
        n = data.num(split)
        for i in range(0, n, self.eval_chunk):
            idx = torch.arange(i, min(i + self.eval_chunk, n))
            x, e = data.x(split, idx, self.backbone), self.conditioning(feats[idx])
            B = len(idx)
            if o.eval_mode == "mean":
                prompts = module.decode(self.shift(
                    module, module.generator(e, module.generator.mean_noise((1, B)))))
            else:
                psi = self.shift(module, module.generator(
                    e, module.generator.sample_noise((o.eval_samples, B), gen)))
                xi = self.randn(psi.shape, gen)
                prompts = module.decode(reparameterize(psi, module.sigma(e), xi))
            # (S, B, P): on a GPU all S samples go through the backbone as one pass of
            # S*B images; on a CPU one pass per sample (measured 1.5x faster there)
            per_pass = len(prompts) if self.device.type == "cuda" else 1
            probs = []
            for j in range(0, len(prompts), per_pass):
                p = prompts[j : j + per_pass]
                xs = x.unsqueeze(0).expand(len(p), *x.shape).reshape(-1, *x.shape[1:])
                logits = module.head(self.backbone(xs, p.reshape(-1, *self.prompt_shape)))
                probs.append(logits.softmax(-1).view(len(p), B, -1))
            out.append(torch.cat(probs).mean(0))
        return torch.cat(out) if out else torch.zeros(0, self.num_classes)
