"""Split sample indices among federated clients, IID or with label skew.

Every partitioner returns one sorted int64 index array per client. The splits
(``iid``, ``dirichlet``, ``pathological``) are disjoint and cover every sample
exactly once; ``dirichlet_draw`` is the LIPS code's per-client sampling, where
clients draw from the full class pools and may share samples. All randomness
comes from the generator passed in, so a seed fixes the partition.
"""

from __future__ import annotations

import numpy as np

PARTITIONS: tuple[str, ...] = ("iid", "dirichlet", "dirichlet_draw", "pathological")
DISJOINT_PARTITIONS: tuple[str, ...] = ("iid", "dirichlet", "pathological")

MAX_DIRICHLET_ATTEMPTS = 100


def partition_indices(
    labels: np.ndarray,
    num_clients: int,
    kind: str,
    seed: int,
    *,
    alpha: float = 0.5,
    min_size: int = 10,
    classes_per_client: int = 2,
    samples_per_client: int = 100,
) -> list[np.ndarray]:
    """Partition ``range(len(labels))`` among ``num_clients`` clients by ``kind``.

    ``alpha`` applies to both Dirichlet kinds, ``min_size`` to ``dirichlet``,
    ``samples_per_client`` to ``dirichlet_draw``, ``classes_per_client`` to
    ``pathological``; the other kinds ignore them.
    """
    rng = np.random.default_rng(seed)
    if kind == "iid":
        return iid_partition(labels, num_clients, rng)
    if kind == "dirichlet":
        return dirichlet_partition(labels, num_clients, rng, alpha=alpha, min_size=min_size)
    if kind == "dirichlet_draw":
        return dirichlet_draw_partition(
            labels, num_clients, rng, alpha=alpha, samples_per_client=samples_per_client
        )
    if kind == "pathological":
        return pathological_partition(
            labels, num_clients, rng, classes_per_client=classes_per_client
        )
    raise ValueError(f"Unknown partition kind {kind!r}; choose one of {', '.join(PARTITIONS)}.")


def iid_partition(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shuffle all samples and deal them into near-equal parts (sizes differ by at most one)."""
    labels = _check_inputs(labels, num_clients)
    shuffled = rng.permutation(len(labels))
    return [np.sort(part) for part in np.array_split(shuffled, num_clients)]


def dirichlet_partition(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    *,
    alpha: float = 0.5,
    min_size: int = 10,
) -> list[np.ndarray]:
    """Label-skewed split: each class is divided among clients by Dir(``alpha``) proportions.

    Small ``alpha`` concentrates each class on few clients; large ``alpha``
    approaches IID. Proportions are redrawn (up to
    :data:`MAX_DIRICHLET_ATTEMPTS` times) until every client holds at least
    ``min_size`` samples. With many clients and little data (e.g. 100 clients
    on 4,000 samples at alpha=0.1) no draw may qualify; the last draw is then
    topped up: each client short of ``min_size`` receives random samples from
    the currently largest client, so the split stays disjoint and complete
    and only the smallest clients' label mix is diluted.
    """
    labels = _check_inputs(labels, num_clients)
    if not alpha > 0:
        raise ValueError(
            f"alpha must be > 0, got {alpha}; e.g. 0.1 (strong skew) to 100 (near IID)."
        )
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}.")
    if num_clients * min_size > len(labels):
        raise ValueError(
            f"Cannot give each of num_clients={num_clients} clients min_size={min_size} samples: "
            f"only {len(labels)} samples. Lower num_clients or min_size."
        )
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    class_sizes = np.array([len(members) for members in by_class])
    for _ in range(MAX_DIRICHLET_ATTEMPTS):
        proportions = rng.dirichlet(np.full(num_clients, alpha), size=len(by_class))
        # Cut points per class: row c holds where each client's share of class c ends.
        cuts = np.floor(np.cumsum(proportions, axis=1) * class_sizes[:, None]).astype(np.int64)
        cuts[:, -1] = class_sizes
        counts = np.diff(cuts, axis=1, prepend=0)
        if counts.sum(axis=0).min() >= min_size:
            break
    parts: list[np.ndarray] = [np.empty(0, dtype=np.int64) for _ in range(num_clients)]
    for members, class_cuts in zip(by_class, cuts, strict=True):
        for client, chunk in enumerate(np.split(members, class_cuts[:-1])):
            parts[client] = np.concatenate([parts[client], chunk])
    _top_up(parts, min_size, rng)
    return [np.sort(part).astype(np.int64) for part in parts]


def dirichlet_draw_partition(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    *,
    alpha: float = 0.1,
    samples_per_client: int = 100,
) -> list[np.ndarray]:
    """Each client draws ``samples_per_client`` samples with its own Dir(``alpha``) class mix.

    The LIPS code's sampling: client proportions q ~ Dir(alpha), class counts
    ``split_counts(samples_per_client, q)``, each class's samples drawn from that class's full
    pool without replacement (with replacement only when a client needs more of a class than
    it has). Draws are per client, so **clients may share samples**; this is not a disjoint split.
    """
    labels = _check_inputs(labels, num_clients)
    if not alpha > 0:
        raise ValueError(
            f"alpha must be > 0, got {alpha}; e.g. 0.1 (strong skew) to 100 (near IID)."
        )
    if samples_per_client < 1:
        raise ValueError(f"samples_per_client must be >= 1, got {samples_per_client}.")
    pools = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    parts = []
    for _ in range(num_clients):
        mix = rng.dirichlet(np.full(len(pools), alpha))
        parts.append(draw_by_class(pools, split_counts(samples_per_client, mix), rng))
    return parts


def split_counts(total: int, proportions: np.ndarray) -> np.ndarray:
    """``total`` split by ``proportions`` into integers that sum to ``total`` exactly (largest
    remainders get the rounding), so a class mix is kept to within one sample per class."""
    proportions = np.asarray(proportions, dtype=np.float64)
    raw = proportions / proportions.sum() * total
    counts = np.floor(raw).astype(np.int64)
    short = total - int(counts.sum())
    counts[np.argsort(-(raw - counts), kind="stable")[:short]] += 1
    return counts


def draw_by_class(
    pools: list[np.ndarray], counts: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """``counts[c]`` indices from each class pool ``pools[c]`` (sorted); without replacement
    unless a count exceeds its pool."""
    drawn = [
        rng.choice(pool, size=int(count), replace=int(count) > len(pool))
        for pool, count in zip(pools, counts, strict=True)
        if count > 0
    ]
    return np.sort(np.concatenate(drawn)).astype(np.int64)


def _top_up(parts: list[np.ndarray], min_size: int, rng: np.random.Generator) -> None:
    """Move random samples from the largest client to every client below ``min_size``."""
    for client in np.argsort([len(p) for p in parts], kind="stable"):
        while len(parts[client]) < min_size:
            donor = int(np.argmax([len(p) for p in parts]))
            take = min(min_size - len(parts[client]), len(parts[donor]) - min_size)
            order = rng.permutation(len(parts[donor]))
            parts[client] = np.concatenate([parts[client], parts[donor][order[:take]]])
            parts[donor] = parts[donor][order[take:]]


def pathological_partition(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    *,
    classes_per_client: int = 2,
) -> list[np.ndarray]:
    """Each client holds exactly ``classes_per_client`` classes; every class is held.

    Over a shuffled class order, client ``c`` takes classes
    ``(c * k + j) mod num_classes`` for ``j < k``; each class's samples are
    then split evenly among the clients holding it.
    """
    labels = _check_inputs(labels, num_clients)
    classes = np.unique(labels)
    k = classes_per_client
    if not 1 <= k <= len(classes):
        raise ValueError(
            f"classes_per_client must be between 1 and the number of classes "
            f"({len(classes)}), got {k}."
        )
    if num_clients * k < len(classes):
        raise ValueError(
            f"num_clients={num_clients} x classes_per_client={k} = {num_clients * k} class slots "
            f"cannot cover all {len(classes)} classes; raise num_clients or classes_per_client."
        )
    order = rng.permutation(classes)
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    for client in range(num_clients):
        for j in range(k):
            holders[int(order[(client * k + j) % len(classes)])].append(client)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for label, clients in holders.items():
        members = rng.permutation(np.flatnonzero(labels == label))
        if len(members) < len(clients):
            raise ValueError(
                f"Class {label} has {len(members)} samples but {len(clients)} clients hold it "
                f"(num_clients={num_clients}, classes_per_client={k}); some client would get none "
                "of it. Lower num_clients or classes_per_client."
            )
        for client, chunk in zip(clients, np.array_split(members, len(clients)), strict=True):
            parts[client].append(chunk)
    return [np.sort(np.concatenate(chunks)).astype(np.int64) for chunks in parts]


def _check_inputs(labels: np.ndarray, num_clients: int) -> np.ndarray:
    """Validate the arguments shared by all partitioners; return labels as a 1-D array."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}.")
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)):
        raise ValueError(f"num_clients must be an integer, got {num_clients!r}.")
    if not 1 <= num_clients <= len(labels):
        raise ValueError(
            f"num_clients must be between 1 and the number of samples "
            f"({len(labels)}), got {num_clients}."
        )
    return labels
