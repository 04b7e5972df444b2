"""Partitioners: who holds which example. Pure functions of (labels, domains, config, seed).

Every partitioner is one weight matrix ``W`` (clients x cells) over *cells* of
examples (a cell is a label, a domain, or a (domain, label) pair). Each cell's
examples are shuffled and dealt to clients in proportion to its column of
``W`` (unbiased systematic rounding). The test split is dealt by the same rule,
with ``W`` = each client's train counts per (domain, label) cell, so a
client's test part follows its own label and domain mix.

- ``iid``        one cell, equal weights.
- ``dirichlet``  cells = labels, each label's column ~ Dirichlet(label_alpha) over clients.
- ``k_classes``  cells = labels, client k holds ``k`` classes (balanced cover).
- ``domain``     cells = domains, one domain per client (round robin).
- ``domain_mix`` cells = (domain, label); client k draws domain proportions
  ``pi_k ~ Dirichlet(domain_alpha)`` (several domains per client, the intra-client
  heterogeneity pFedBayesPT targets) and, when ``label_alpha`` is set, label
  proportions ``lambda_k ~ Dirichlet(label_alpha)``; ``W[k, (d, c)] = pi_kd * lambda_kc``.
- ``natural``    cells = the dataset's groups (a writer, a user: its ``group`` column);
  each group goes whole to one client (largest groups first, to the client holding
  least), test rows with it: the federation FEMNIST-style data sets come with.

Each is registered by name (``@register_partitioner``) with the recipe options it
reads; the recipe type itself is ``config.PartitionConfig``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np

from .. import plugins
from ..config import PartitionConfig
from ..errors import ConfigError, DataError

# name -> (weights function, the recipe options it reads beyond num_clients, seed,
# min_samples, max_draws, whether it draws at random and may redraw for min_samples,
# whether its cells are the dataset's groups)
_PARTITIONERS: plugins.Registry[tuple[Callable, tuple[str, ...], bool, bool]] = \
    plugins.Registry("partitioners")


def register_partitioner(name: str, reads: tuple[str, ...] = (), random: bool = False,
                         by_group: bool = False):
    """Make ``fn(cfg, labels, domains, num_classes, num_domains, rng) -> (cells, W)``
    the partitioner ``name``: adding one is one decorated function (here or in a
    plugin). ``reads`` names the ``PartitionConfig`` fields it uses (they go into the
    manifest and the folder name); ``random``: it draws, and may redraw to meet
    ``min_samples``; ``by_group``: ``fn`` also gets ``groups=`` (each train row's group)
    and returns groups as its cells, and the test rows follow their group."""

    def deco(fn: Callable) -> Callable:
        _PARTITIONERS.add(name, (fn, reads, random, by_group), fn)
        return fn

    return deco


def partitioner_names() -> list[str]:
    return _PARTITIONERS.names()


def _partitioner(name: str) -> tuple[Callable, tuple[str, ...], bool, bool]:
    found = _PARTITIONERS.get(name)
    if found is None:
        raise ConfigError(f"unknown partitioner {name!r} (data.partitioner / --partitioner); "
                          f"allowed: {partitioner_names()}")
    return found


def recipe_record(cfg: PartitionConfig) -> dict:
    """The recipe options that matter for its partitioner (what a manifest records)."""
    _, reads, _, _ = _partitioner(cfg.partitioner)
    keep = ("partitioner", "num_clients", "seed", "min_samples", "max_draws", *reads)
    rec = {f.name: getattr(cfg, f.name) for f in fields(PartitionConfig) if f.name in keep}
    # held-out clients and domains: recorded only when set, so a recipe without them
    # keeps its folder and manifest
    rec.update({k: getattr(cfg, k) for k in ("new_clients", "ood_domains") if getattr(cfg, k)})
    return rec


@dataclass
class Partition:
    """Per-client example indices into the dataset (train and test)."""

    train: list[np.ndarray]
    test: list[np.ndarray]
    new: list[int] = field(default_factory=list)  # clients held out of training
    ood: dict[str, int] = field(default_factory=dict)  # held-out domain -> its client


def deal(cells: np.ndarray, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Assign each example to a client: cell ``c``'s examples go to clients in
    proportion to ``weights[:, c]``. Returns the client id per example (-1 where
    a cell has zero total weight)."""
    num_clients, num_cells = weights.shape
    owner = np.full(len(cells), -1, dtype=np.int64)
    order = np.argsort(cells, kind="stable")
    bounds = np.searchsorted(cells[order], np.arange(num_cells + 1))
    for c in range(num_cells):
        idx = order[bounds[c] : bounds[c + 1]]
        total = weights[:, c].sum()
        if len(idx) == 0 or total <= 0:
            continue
        counts = systematic_round(weights[:, c] / total, len(idx), rng)
        owner[rng.permutation(idx)] = np.repeat(np.arange(num_clients), counts)
    return owner


def systematic_round(p: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Integer counts summing to ``n``, each within 1 of ``n * p`` and equal to it in
    expectation (systematic sampling of the fractional parts from one random offset).

    Unbiased matters: a deterministic rule (largest remainder) applied cell by cell
    always rounds the same small clients down, and many small cells starve them.
    """
    exact = p * n
    counts = np.floor(exact).astype(np.int64)
    frac = exact - counts
    short = int(round(n - counts.sum()))
    if short > 0:
        edges = np.cumsum(frac)
        picks = rng.uniform() + np.arange(short)
        counts[np.searchsorted(edges, picks, side="right").clip(max=len(p) - 1)] += 1
    return counts


def _give_every_client_a_test_example(owner: np.ndarray, cells: np.ndarray,
                                      train_counts: np.ndarray) -> None:
    """A small client can get no test example by rounding; move it one, from the
    cell it trains on most, from the client there with the most test examples (in place)."""
    K = train_counts.shape[0]
    counts = np.bincount(owner[owner >= 0], minlength=K)
    for k in np.flatnonzero(counts == 0):
        for c in np.argsort(-train_counts[k], kind="stable"):
            if train_counts[k, c] == 0:
                break
            in_cell = np.flatnonzero(cells == c)
            held = np.bincount(owner[in_cell][owner[in_cell] >= 0], minlength=K)
            donor = int(np.argmax(np.where(held > 0, counts, -1)))
            if held[donor] > 0 and counts[donor] > 1:
                owner[in_cell[owner[in_cell] == donor][-1]] = k
                counts[donor] -= 1
                counts[k] += 1
                break


@register_partitioner("iid")
def _iid(cfg, labels, domains, num_classes, num_domains, rng):
    return np.zeros(len(labels), np.int64), np.ones((cfg.num_clients, 1))


@register_partitioner("dirichlet", reads=("label_alpha",), random=True)
def _dirichlet(cfg, labels, domains, num_classes, num_domains, rng):
    return labels, rng.dirichlet(np.full(cfg.num_clients, cfg.label_alpha), size=num_classes).T


@register_partitioner("k_classes", reads=("k",))
def _k_classes(cfg, labels, domains, num_classes, num_domains, rng):
    if cfg.k > num_classes:
        raise ConfigError(f"k={cfg.k} exceeds the dataset's {num_classes} classes")
    perm = rng.permutation(num_classes)
    w = np.zeros((cfg.num_clients, num_classes))
    for i in range(cfg.num_clients):
        w[i, perm[(i * cfg.k + np.arange(cfg.k)) % num_classes]] = 1
    return labels, w


@register_partitioner("domain")
def _domain(cfg, labels, domains, num_classes, num_domains, rng):
    K = cfg.num_clients
    w = np.zeros((K, num_domains))
    w[np.arange(K), rng.permutation(K) % num_domains] = 1
    return domains, w


@register_partitioner("domain_mix", reads=("domain_alpha", "label_alpha"), random=True)
def _domain_mix(cfg, labels, domains, num_classes, num_domains, rng):
    K = cfg.num_clients
    pi = rng.dirichlet(np.full(num_domains, cfg.domain_alpha), size=K)  # K x D
    if cfg.label_alpha is None:
        lam = np.ones((K, num_classes))
    else:
        lam = rng.dirichlet(np.full(num_classes, cfg.label_alpha), size=K)  # K x C
    w = (pi[:, :, None] * lam[:, None, :]).reshape(K, num_domains * num_classes)
    return domains * num_classes + labels, w


@register_partitioner("natural", by_group=True)
def _natural(cfg, labels, domains, num_classes, num_domains, rng, groups):
    sizes = np.bincount(groups)
    present = np.flatnonzero(sizes)
    K = cfg.num_clients
    if K > len(present):
        raise DataError(f"partitioner natural gives each group to one client, and the data set "
                        f"has {len(present)} groups with training rows for {K} clients: use at "
                        f"most {len(present)} clients (--num-clients).")
    order = rng.permutation(present)
    order = order[np.argsort(-sizes[order], kind="stable")]  # largest first, ties at random
    held = [(0, k) for k in range(K)]  # (rows held, client): the least-held client next
    w = np.zeros((K, len(sizes)))
    for g in order:
        rows, k = heapq.heappop(held)
        w[k, g] = 1
        heapq.heappush(held, (rows + int(sizes[g]), k))
    return groups, w


def partition_indices(
    cfg: PartitionConfig,
    labels: np.ndarray,
    domains: np.ndarray,
    is_train: np.ndarray,
    num_classes: int,
    num_domains: int,
    groups: np.ndarray | None = None,
    domain_names: list[str] | None = None,
) -> Partition:
    """Split a dataset's examples among ``cfg.num_clients`` clients (``groups``: each
    example's natural group, for a partitioner that deals whole groups).

    Held out, when the recipe says so: ``cfg.ood_domains`` (names in ``domain_names``)
    leave the dealing, and each becomes one more client (after the dealt ones) holding
    that domain's rows, the unseen-domain population; ``cfg.new_clients`` is a seeded
    choice of dealt clients that never train. Without either, the same deal as ever.

    Raises a ``DataError`` when ``min_samples`` train examples per client cannot
    be met within ``cfg.max_draws`` draws, rather than retrying forever.
    """
    labels = np.asarray(labels, np.int64)
    domains = np.asarray(domains, np.int64)
    is_train = np.asarray(is_train, bool)
    names = list(domain_names or [str(d) for d in range(num_domains)])
    held = _held_domains(cfg, names, domains, is_train)
    if not held:
        part = _deal_all(cfg, labels, domains, is_train, num_classes, num_domains, groups)
    else:
        keep = np.flatnonzero(~np.isin(domains, held))
        compact = np.full(num_domains, -1, np.int64)
        kept = np.setdiff1d(np.arange(num_domains), held)
        compact[kept] = np.arange(len(kept))
        try:
            sub = _deal_all(cfg, labels[keep], compact[domains[keep]], is_train[keep],
                            num_classes, len(kept),
                            None if groups is None else np.asarray(groups)[keep])
        except DataError as e:
            raise DataError(f"with data.ood_domains={cfg.ood_domains} held out of training: "
                            f"{e}") from e
        part = Partition([keep[t] for t in sub.train], [keep[t] for t in sub.test])
        for i, (name, d) in enumerate(zip(cfg.ood_domains, held)):
            part.train.append(np.flatnonzero(is_train & (domains == d)))
            part.test.append(np.flatnonzero(~is_train & (domains == d)))
            part.ood[name] = cfg.num_clients + i
    part.new = new_client_ids(cfg)
    return part


def new_client_ids(cfg: PartitionConfig) -> list[int]:
    """The dealt clients ``cfg.new_clients`` holds out of training: a choice seeded by
    the recipe's seed alone, apart from the deal's own draws (which it leaves as they were)."""
    n = cfg.held_out_count()
    if n == 0:
        return []
    rng = np.random.default_rng([0 if cfg.seed is None else cfg.seed, 0x6E6577])
    return sorted(rng.choice(cfg.num_clients, n, replace=False).tolist())


def _held_domains(cfg: PartitionConfig, names: list[str], domains: np.ndarray,
                  is_train: np.ndarray) -> list[int]:
    """The domain ids ``cfg.ood_domains`` names, checked: each a domain of the data set with
    test rows to evaluate, and at least one domain left to train on."""
    if not cfg.ood_domains:
        return []
    unknown = [d for d in cfg.ood_domains if d not in names]
    if unknown:
        raise DataError(f"data.ood_domains names {unknown}, not a domain of this data set; its "
                        f"domains: {names}")
    held = [names.index(d) for d in cfg.ood_domains]
    if len(held) == len(names):
        raise DataError(f"data.ood_domains={cfg.ood_domains} holds out every domain of the data "
                        "set: leave at least one to train on")
    no_test = [n for n, d in zip(cfg.ood_domains, held) if not np.any(~is_train & (domains == d))]
    if no_test:
        raise DataError(f"held-out domain(s) {no_test} have no test rows to evaluate the "
                        "unseen-domain client on; hold out another domain (data.ood_domains)")
    return held


def _deal_all(cfg: PartitionConfig, labels: np.ndarray, domains: np.ndarray,
              is_train: np.ndarray, num_classes: int, num_domains: int,
              groups: np.ndarray | None) -> Partition:
    """Every example dealt to the ``cfg.num_clients`` clients (``partition_indices``)."""
    weights, _, random, by_group = _partitioner(cfg.partitioner)
    if by_group and groups is None:
        raise DataError(f"partitioner {cfg.partitioner!r} deals the data set's groups, and this "
                        "data set has no group column: import it with `rayfed-bpt data prepare "
                        "... --group-column NAME` (a writer or user id column).")
    train_idx = np.flatnonzero(is_train)
    test_idx = np.flatnonzero(~is_train)
    K = cfg.num_clients
    _check_enough(cfg, len(train_idx))
    if cfg.seed is None:
        cfg = cfg.recipe(0)
    rng = np.random.default_rng(cfg.seed)
    draws = cfg.max_draws if random else 1
    smallest = 0
    extra = {"groups": np.asarray(groups, np.int64)[train_idx]} if by_group else {}
    for _ in range(draws):
        cells, w = weights(
            cfg, labels[train_idx], domains[train_idx], num_classes, num_domains, rng, **extra
        )
        owner = deal(cells, w, rng)
        sizes = np.bincount(owner[owner >= 0], minlength=K)
        smallest = int(sizes.min())
        if smallest >= max(cfg.min_samples, 1):
            break
    else:
        hint = {
            "dirichlet": "raise --label-alpha",
            "domain_mix": "raise --domain-alpha / --label-alpha",
        }.get(cfg.partitioner, "check the partitioner options")
        raise DataError(
            f"partitioner {cfg.partitioner!r} ({recipe_record(cfg)}) could not give every one of "
            f"{K} clients at least {max(cfg.min_samples, 1)} training examples in {draws} "
            f"draw(s) (smallest client: {smallest}). Lower --min-samples, use fewer clients, "
            f"or {hint}."
        )
    if by_group:  # test rows go where their group went
        test_owner = deal(np.asarray(groups, np.int64)[test_idx], w, rng)
    else:  # the test split dealt by each client's own (domain, label) train mix
        joint = domains * num_classes + labels
        num_cells = num_domains * num_classes
        train_counts = np.zeros((K, num_cells))
        assigned = owner >= 0
        np.add.at(train_counts, (owner[assigned], joint[train_idx][assigned]), 1)
        test_owner = deal(joint[test_idx], train_counts, rng)
        _give_every_client_a_test_example(test_owner, joint[test_idx], train_counts)

    return Partition(train=_by_owner(train_idx, owner, K), test=_by_owner(test_idx, test_owner, K))


def _check_enough(cfg: PartitionConfig, n_train: int) -> None:
    K = cfg.num_clients
    if K > n_train:
        raise DataError(
            f"{K} clients but only {n_train} training examples: every client needs data. "
            "Use fewer clients (--num-clients) or a larger dataset."
        )
    if K * cfg.min_samples > n_train:
        raise DataError(
            f"{K} clients x min_samples={cfg.min_samples} = {K * cfg.min_samples} exceeds the "
            f"{n_train} training examples. Lower --min-samples or use fewer clients."
        )


def _by_owner(idx: np.ndarray, own: np.ndarray, K: int) -> list[np.ndarray]:
    """Each client's rows, sorted (an owner of -1: the row goes to no client)."""
    keep = own >= 0
    idx, own = idx[keep], own[keep]
    order = np.argsort(own, kind="stable")
    bounds = np.searchsorted(own[order], np.arange(K + 1))
    return [np.sort(idx[order[bounds[k] : bounds[k + 1]]]) for k in range(K)]
