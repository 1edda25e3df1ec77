"""KLMS encode and decode per client, numpy vs torch, side by side in one run.

    python benchmarks/fedpm_klms_speed.py                  # CPU, and CUDA when torch sees one
    python benchmarks/fedpm_klms_speed.py --clients 3 --repeats 2   # smoke run

What a FedPM client times as ``fedpm-encode-s`` (``encode_masks_klms`` over every layer) and
what a reducing node or the server times as decode (``decode_masks`` with the KLMS decoder), on
one thread as a Ray actor has (``torch.set_num_threads(1)``), for the masks of two networks:

* ``cnn`` on 28×28 digits (421,642 mask entries): the 100-client FedPM setting of
  ``benchmarks/fedpm_vs_dense.py`` (dirichlet, 10 of 100 clients a round), whose measured KL
  bound is 0.0016 bits per parameter;
* ``conv6`` on 32×32 colour images (2,262,602 entries), the FedPM paper's CIFAR-10 network.

The θ and q are synthetic, shaped like a FedPM round's: θ the posterior mode of 10 ε-clipped
masks (values 0.01 + 0.098·k), q = σ(logit θ + noise) with the noise scaled to the KL bound
per parameter measured in ``fedpm_vs_dense`` (0.0016 at 10 of 100 clients, 0.006 at 10 of 10).
Coding time follows the number of candidate hashes (2^bits × the entries of blocks that carry
an index), which this reproduces; the coded bytes are compared with numpy's on every call.

Backends, each timed per client (best of ``--repeats``, the order rotated between repeats so
that the shared box's load falls on all alike): ``numpy`` (the reference), ``torch`` (every
layer in torch), ``runtime`` (what a client on that device runs: torch from
``klms_codec.TORCH_FROM_HASHES`` candidate hashes, numpy below). A second table times one layer
of n entries, the basis of those thresholds. Writes
``benchmarks/results/fedpm_klms_speed.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models.masked import build_masked  # noqa: E402
from strategies.fedpm import klms_codec  # noqa: E402
from strategies.fedpm.klms_codec import (  # noqa: E402
    KlmsSettings,
    block_starts,
    decode_layer,
    encode_masks_klms,
    kl_bits,
    layer_key,
    logit_gap,
)
from strategies.fedpm.mask_codec import decode_masks, quantize_prior  # noqa: E402

NETWORKS = {  # name -> (masked model, input shape, classes)
    "cnn": ("masked_cnn", (1, 28, 28), 10),
    "conv6": ("masked_conv6", (3, 32, 32), 10),
}
KL_PER_PARAM = {"10 of 100 clients": 0.0016, "10 of 10 clients": 0.006}
POSTERIOR_CLIENTS, EPS = 10, 0.01
RESULTS = REPO / "benchmarks" / "results" / "fedpm_klms_speed.md"
ALWAYS = {"cpu": 0, "cuda": 0}
CLOCKS = {"thread": time.thread_time, "wall": time.perf_counter}
CLOCK = time.thread_time  # main() sets it: the thread's CPU time where the box is shared


def synthetic_round(
    shapes: dict[str, tuple[int, ...]], kl_target: float, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(q, uint16 θ) per layer: θ a posterior mode of 10 clipped masks, q a trained
    perturbation of it with Σ KL / N ≈ ``kl_target`` bits."""
    rng = np.random.default_rng(seed)
    total = sum(math.prod(s) for s in shapes.values())
    polar = rng.beta(0.3, 0.3, total)
    ones = rng.binomial(POSTERIOR_CLIENTS, polar)
    theta = EPS + (1 - 2 * EPS) * ones / POSTERIOR_CLIENTS
    prior = quantize_prior(theta)
    p = prior / 65536.0
    base = np.log(p) - np.log1p(-p)
    noise = rng.standard_normal(total)

    def q_of(scale: float) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(base + scale * noise)))

    low, high = 0.0, 4.0
    for _ in range(40):  # bisection on the noise scale: KL grows with it
        mid = (low + high) / 2
        low, high = (mid, high) if kl_bits(q_of(mid), prior).mean() < kl_target else (low, mid)
    q = q_of((low + high) / 2)
    bounds = np.cumsum([0, *(math.prod(s) for s in shapes.values())])
    qs, priors = {}, {}
    for (name, shape), a, b in zip(shapes.items(), bounds, bounds[1:], strict=False):
        qs[name], priors[name] = q[a:b].reshape(shape), prior[a:b].reshape(shape)
    return qs, priors


def backends(devices: list[torch.device]) -> dict[str, tuple[torch.device | None, dict | None]]:
    """name -> (device, TORCH_FROM_HASHES while it runs; None: the shipped thresholds)."""
    named: dict[str, tuple[torch.device | None, dict | None]] = {"numpy": (None, None)}
    for device in devices:
        named[f"torch {device.type}"] = (device, ALWAYS)
        named[f"runtime {device.type}"] = (device, None)
    return named


@contextlib.contextmanager
def thresholds(values: dict[str, int] | None) -> Iterator[None]:
    """Run with ``TORCH_FROM_HASHES`` = ``values`` (None: the shipped ones)."""
    shipped = klms_codec.TORCH_FROM_HASHES
    klms_codec.TORCH_FROM_HASHES = values or shipped
    try:
        yield
    finally:
        klms_codec.TORCH_FROM_HASHES = shipped


def code_once(
    qs: dict[str, np.ndarray],
    priors: dict[str, np.ndarray],
    keys: dict[str, np.uint32],
    seed: int,
    device: torch.device | None,
) -> tuple[float, float, bytes, dict[str, np.ndarray]]:
    """One client's encode and decode seconds, its coded bytes and the decoded masks."""
    settings = KlmsSettings()
    shapes = {name: prior.shape for name, prior in priors.items()}
    started = CLOCK()
    coded, _ = encode_masks_klms(qs, priors, keys, settings, np.random.default_rng(seed), device)
    encoded = CLOCK()

    def klms(name: str, segment: np.ndarray) -> np.ndarray:
        return decode_layer(segment, priors[name], keys[name], settings, name, device)

    masks = decode_masks(coded.stream, coded.header(), shapes, priors, klms)
    decoded = CLOCK()
    return encoded - started, decoded - encoded, coded.stream.tobytes(), masks


def client_times(
    network: str, kl_target: float, clients: int, repeats: int, devices: list[torch.device]
) -> dict[str, dict[str, list[float]]]:
    """Per backend: encode and decode seconds per client (best of ``repeats``)."""
    model, shape, classes = NETWORKS[network]
    template = build_masked(model, shape, classes, 0)
    shapes = {k: tuple(v.shape) for k, v in template.state_dict().items()}
    named = backends(devices)
    times = {name: {"encode": [], "decode": []} for name in named}
    for client in range(clients):
        qs, priors = synthetic_round(shapes, kl_target, seed=client)
        keys = {name: layer_key(0, 5, client, i) for i, name in enumerate(shapes)}
        best = {name: [math.inf, math.inf] for name in named}
        reference = None
        for repeat in range(repeats + 1):  # the first pass warms every backend up
            order = list(named)
            order = order[repeat % len(order) :] + order[: repeat % len(order)]
            for name in order:
                device, values = named[name]
                with thresholds(values):
                    encode_s, decode_s, stream, masks = code_once(qs, priors, keys, client, device)
                if reference is None:
                    reference = (stream, masks)
                elif stream != reference[0] or any(
                    not np.array_equal(masks[k], reference[1][k]) for k in masks
                ):
                    raise AssertionError(f"{name}: bytes or masks differ from the first backend's")
                if repeat:
                    best[name] = [min(best[name][0], encode_s), min(best[name][1], decode_s)]
        for name in named:
            times[name]["encode"].append(best[name][0])
            times[name]["decode"].append(best[name][1])
    return times


def layer_times(sizes: list[int], repeats: int, devices: list[torch.device]) -> list[list[str]]:
    """One layer of n entries at the 10-of-100 KL: encode ms per backend."""
    rows = []
    named = {"numpy": None, **{f"torch {d.type}": d for d in devices}}
    for n in sizes:
        qs, priors = synthetic_round({"w": (n,)}, KL_PER_PARAM["10 of 100 clients"], seed=n)
        keys = {"w": layer_key(0, 5, 0, 0)}
        best = dict.fromkeys(named, math.inf)
        for repeat in range(repeats + 1):
            for name, device in named.items():
                with thresholds(ALWAYS):
                    seconds = code_once(qs, priors, keys, 0, device)[0]
                if repeat:
                    best[name] = min(best[name], seconds)
        rows.append([f"{n:,}", *(f"{1e3 * best[name]:.2f}" for name in named)])
    return rows


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def shared_times(network: str, kl_target: float, repeats: int) -> float:
    """Seconds of the numpy work both backends do before hashing, for one client's masks: KL
    per entry, block cuts, and logit(q) − logit(p) (for every entry: an upper bound, as only
    the entries of blocks that carry an index need it)."""
    model, shape, classes = NETWORKS[network]
    template = build_masked(model, shape, classes, 0)
    shapes = {k: tuple(v.shape) for k, v in template.state_dict().items()}
    qs, priors = synthetic_round(shapes, kl_target, seed=0)
    best = math.inf
    for _ in range(repeats + 1):
        started = CLOCK()
        for name, q in qs.items():
            q, prior = np.ravel(q), np.ravel(priors[name])
            kl = kl_bits(q, prior)
            block_starts(kl, KlmsSettings.kl_per_block, KlmsSettings.max_block)
            logit_gap(q, prior)
        best = min(best, CLOCK() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-cuda", action="store_true")
    parser.add_argument(
        "--clock",
        choices=CLOCKS,
        help="thread: this thread's CPU seconds (default without CUDA: other tenants' load on "
        "a shared box does not count); wall: elapsed seconds (default with CUDA)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append(torch.device("cuda"))
    args.clock = args.clock or ("wall" if len(devices) > 1 else "thread")
    global CLOCK
    CLOCK = CLOCKS[args.clock]
    measured = []
    for network in NETWORKS:
        for setting, kl_target in KL_PER_PARAM.items():
            times = client_times(network, kl_target, args.clients, args.repeats, devices)
            for part in ("encode", "decode"):
                ms = {name: 1e3 * statistics.median(t[part]) for name, t in times.items()}
                measured.append(
                    {
                        "network": network,
                        "kl": kl_target,
                        "setting": setting,
                        "part": part,
                        "ms": ms,
                    }
                )
                print(network, setting, part, {k: round(v, 1) for k, v in ms.items()}, flush=True)
    shared = {
        network: 1e3 * shared_times(network, KL_PER_PARAM["10 of 100 clients"], args.repeats)
        for network in NETWORKS
    }
    sizes = [1 << k for k in (10, 12, 14, 16, 18, 19, 20)]
    layers = layer_times(sizes, args.repeats, devices)
    write(args, devices, measured, shared, layers)


def reading(measured: list[dict], devices: list[torch.device]) -> list[str]:
    """What the tables say, per device: the range of speed-ups over numpy per part."""
    lines = ["## Reading", ""]
    for device in devices:
        parts = []
        for part in ("encode", "decode"):
            for backend in (f"torch {device.type}", f"runtime {device.type}"):
                ratios = [
                    m["ms"]["numpy"] / m["ms"][backend] for m in measured if m["part"] == part
                ]
                parts.append(f"{backend} {part} {min(ratios):.2f}–{max(ratios):.2f}× numpy's")
        lines.append(f"- {device.type}: " + "; ".join(parts) + ".")
    if len(devices) == 1:
        lines.append("- cuda: not measured in this run (torch saw no GPU).")
    lines.append(
        "- Where *runtime* runs numpy on every layer (the cnn's encode on a CPU, every CPU "
        "decode) it runs numpy's very code: its ratio to numpy is this box's timing noise."
    )
    lines.append("")
    return lines


def write(args, devices, measured, shared, layers) -> None:
    named = list(measured[0]["ms"])
    gpu = torch.cuda.get_device_name() if len(devices) > 1 else "none"
    rows = [
        [
            m["network"],
            f"KL {m['kl']} ({m['setting']})",
            m["part"],
            *(f"{m['ms'][name]:.1f}" for name in named),
            *(f"{m['ms']['numpy'] / m['ms'][name]:.2f}×" for name in named[1:]),
        ]
        for m in measured
    ]
    encode_numpy = {
        network: statistics.fmean(
            m["ms"]["numpy"] for m in measured if m["network"] == network and m["part"] == "encode"
        )
        for network in NETWORKS
    }
    lines = [
        "# FedPM KLMS: encode and decode per client, numpy vs torch",
        "",
        f"Written by `benchmarks/fedpm_klms_speed.py` on {datetime.date.today()}: "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread "
        f"(as a Ray actor has), GPU: {gpu}; numpy {np.__version__}, torch {torch.__version__}. "
        f"Times: {'elapsed' if args.clock == 'wall' else 'CPU time of the coding thread'}; "
        f"median over {args.clients} clients of each client's best of {args.repeats} timed "
        "runs (after a warm-up run), backends interleaved; every backend's bytes and decoded "
        "masks equal numpy's (checked on each call). KLMS defaults: 6 bits (64 candidates), "
        "3 bits of KL per block, blocks of at most 4,096 entries.",
        "",
        "*numpy*: the reference; *torch*: every layer in torch on that device; *runtime*: what "
        "a client or reducing node on that device runs (torch from "
        f"`TORCH_FROM_HASHES` = {klms_codec.TORCH_FROM_HASHES} candidate hashes, numpy below).",
        "",
        *table(
            [
                "network",
                "θ/q",
                "part",
                *(f"{n} ms" for n in named),
                *(f"{n} speed-up" for n in named[1:]),
            ],
            rows,
        ),
        "",
        "One layer of n entries (KL 0.0016 per entry), encode ms, every size in each backend:",
        "",
        *table(
            ["entries", *(f"{n} ms" for n in ["numpy", *(f"torch {d.type}" for d in devices)])],
            layers,
        ),
        "",
        "Numpy work every backend does before hashing (KL per entry, block cuts, logit gaps of "
        "every entry; it stays in numpy because its logarithms and cumulative sum must be "
        "numpy's to the bit), against the numpy encode's total:",
        "",
        *table(
            ["network", "shared numpy ms", "numpy encode ms", "share"],
            [
                [
                    n,
                    f"{shared[n]:.1f}",
                    f"{encode_numpy[n]:.1f}",
                    f"{shared[n] / encode_numpy[n]:.0%}",
                ]
                for n in NETWORKS
            ],
        ),
        "",
    ]
    lines += reading(measured, devices)
    args.results.write_text("\n".join(lines))
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
