"""LBGM: look-back gradient multiplier (Azam et al., ICLR 2022), plus top-k and signSGD.

Every client sends its pseudo-gradient g = θ_start − θ_end, optionally compressed per layer
(top-k or scaled sign, with error feedback). Under LBGM each *unit* (a parameter tensor, or
the whole model with ``granularity=model``) is compared with the client's look-back gradient
(LBG), the last vector of that unit it sent in full: ρ = ⟨g, LBG⟩/‖LBG‖² and the phase error
e = 1 − cos²(g, LBG) = ‖g − ρ·LBG‖²/‖g‖². If e ≤ δ only ρ travels, else the unit goes in full
and becomes the new LBG. Stacked on a compressor, LBGM works on the compressed (sparse)
vector, never on the dense one. Non-parameter buffers (BatchNorm statistics) go in full and
are averaged like FedAvg does.

The server keeps each client's LBGs (``lbg_store``), rebuilds ρ·LBG, averages the
pseudo-gradients weighted by ``num-examples`` over the replies received, and steps
θ ← θ − server_lr·v with v ← server_momentum·v + ḡ (server_lr=1, momentum 0 is FedAvg).

Version protocol (so a lost reply never causes a wrong reconstruction): an LBG's version is
the round it was sent in. Each round the server tells every sampled client the version it
holds per unit (−1: none). A client reuses only an LBG whose version equals the server's; a
unit it sends in full is kept as a *candidate* and promoted only once the server advertises
that version, otherwise discarded. The server rejects a ρ against a version it does not hold.

Deviations from the public code (see the project's LBGM spec): multi-step local training
(pseudo-gradient, not one full-batch gradient); weights renormalised over the replies; no
LBGM residual (only the compressor keeps one); top-k + LBGM stores the sparse vector.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, MetricRecord

from strategies.core.params import (
    check_choice,
    check_count,
    check_number,
)
from strategies.core.strategy import ClientUpdate
from strategies.core.validation import (
    ReplyError,
    check_finite_metric,
    require_record,
)
from strategies.core.wire import Record
from strategies.numeric.arrays import dot
from strategies.pseudo_gradient.compression import COMPRESSORS
from strategies.pseudo_gradient.lbg_store import STORE_DTYPES, STORES, LBGArchive, make_store
from strategies.pseudo_gradient.server import (
    Decoded,
    PseudoGradient,
    PseudoGradients,
    Scaled,
    TopKParams,
)

log = logging.getLogger(__name__)

GRANULARITIES = ("layer", "model")
MODEL_UNIT = "model"
VERSIONS = "lbgm-versions"  # downlink, per client: ConfigRecord {"versions": [int per unit]}
LBGM = "lbgm"  # uplink: MetricRecord {"rho:<unit>": float, "version:<unit>": int} (reused units)
CLIENT_COUNTS = ("lbgm-reused", "lbgm-units", "lbgm-checked", "lbgm-phase-error-sum")
ARCHIVE = "lbg"  # in the run's checkpoint folder: the look-back gradients, each written once


def units_of(layers: list[str], granularity: str) -> dict[str, list[str]]:
    """Decision units: one per layer, or one (``"model"``) holding every layer in order."""
    if granularity == "layer":
        return {name: [name] for name in layers}
    if granularity == "model":
        return {MODEL_UNIT: list(layers)}
    raise ValueError(f"unknown granularity {granularity!r}; choose one of: {GRANULARITIES}")


def projection(g: np.ndarray, lbg: np.ndarray) -> tuple[float, float] | None:
    """(ρ, e): least-squares multiplier of ``lbg`` for ``g`` and the phase error 1 − cos².

    None when ``lbg`` is zero (no direction to reuse) or a product overflows. A zero ``g``
    gives (0, 0): ρ·LBG = g. The three dot products run in the vectors' own precision (float32
    for a model's gradients, :func:`~strategies.numeric.arrays.dot`): casting both to float64
    first cost
    ~4× more, and ρ and e differ from the float64 values by ~1e-6 relative, far finer than any
    useful δ.
    """
    with np.errstate(over="ignore"):  # an overflow is answered below: no fit
        bb, gb, gg = dot(lbg, lbg), dot(g, lbg), dot(g, g)
    if not bb > 0 or not all(map(math.isfinite, (bb, gb, gg))):
        return None
    if gg == 0:
        return 0.0, 0.0
    return gb / bb, min(max(1.0 - gb * gb / (gg * bb), 0.0), 1.0)


@dataclass(frozen=True)
class LbgmParams(TopKParams):
    """LBGM's threshold, unit, optional compressor and server-side LBG store."""

    delta: float = 0.2
    granularity: str = "layer"
    compressor: str = "none"
    store: str = "memory"
    store_dtype: str = "float32"
    store_dir: str | None = None
    max_age: int | None = None

    def check(self) -> None:
        super().check()
        check_number(
            "delta",
            self.delta,
            lambda v: v < 1,
            "must be a number < 1 (a phase error is at most 1, so at δ ≥ 1 every look-back "
            "gradient would be reused forever and no layer sent again after round 1)",
        )
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("compressor", self.compressor, COMPRESSORS)
        check_choice("store", self.store, STORES)
        check_choice("store_dtype", self.store_dtype, STORE_DTYPES)
        check_count("max_age", self.max_age, optional="never")

    def warnings(self) -> list[str]:
        found = super().warnings() if self.compressor == "topk" else []
        if self.compressor != "topk" and self.topk_ratio != TopKParams.topk_ratio:
            found.append(
                f"strategy.topk_ratio={self.topk_ratio} changes nothing: "
                f"strategy.compressor={self.compressor} keeps every entry (top-k needs "
                "strategy.compressor=topk)"
            )
        if self.store_dir is not None and self.store != "disk":
            found.append(
                f"strategy.store_dir={self.store_dir} is unused: it applies to store=disk only"
            )
        return found


class Lbgm(PseudoGradient):
    """LBGM: per unit, a scalar ρ instead of the full vector when the LBG still fits."""

    name = "lbgm"
    uses_lbgm = True
    nodes_decode = False
    unreduced_reason = "decoding needs the server's look-back gradients of each client"
    params_type = LbgmParams

    @property
    def compressor(self) -> str:
        """LBGM stacks on the configured compressor (none, topk or sign)."""
        return self.params.compressor

    @cached_property
    def units(self) -> dict[str, list[str]]:
        return units_of(list(self.layers), self.params.granularity)

    @cached_property
    def store(self):
        """The server's LBG store (built on first use: it needs the model's layer sizes)."""
        params = self.params
        sizes = {
            unit: sum(math.prod(self.layers[name]) for name in names)
            for unit, names in self.units.items()
        }
        return make_store(params.store, sizes, params.store_dtype, params.store_dir)

    def keep_files_in(self, folder: Path) -> None:
        """Each look-back gradient the store receives is written once beside the checkpoints."""
        self.store.archive = LBGArchive(folder / ARCHIVE)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The server step's state and the version of every client's look-back gradients (the
        vectors are in the archive: each round writes only those it received)."""
        return {**super().state_dict(), **self.store.state_dict()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        super().load_state_dict(state)
        self.store.load_state_dict(state)

    def client_records(self, server_round: int, client_id: int) -> dict[str, Record]:
        versions = []
        for unit in self.units:
            version = self.store.version(client_id, unit)
            max_age = self.params.max_age
            if max_age is not None and 0 <= version < server_round - max_age:
                self.store.evict(client_id, unit)
                version = -1
            versions.append(version)
        return {VERSIONS: ConfigRecord({"versions": versions})}

    def decode(self, update: ClientUpdate) -> Decoded:
        for key in CLIENT_COUNTS:
            check_finite_metric(update.metrics, key)
        record = require_record(update.records, LBGM, MetricRecord)
        known = {f"{kind}:{unit}" for unit in self.units for kind in ("rho", "version")}
        if set(record.keys()) - known:
            raise ReplyError("lbgm", f"unknown lbgm keys {sorted(set(record.keys()) - known)}")
        reused: dict[str, tuple[float, int]] = {}
        for unit in self.units:
            if f"rho:{unit}" not in record:
                continue
            rho, version = record[f"rho:{unit}"], record.get(f"version:{unit}")
            if not isinstance(rho, float) or not math.isfinite(rho):
                raise ReplyError("lbgm", f"{unit}: rho must be a finite float, got {rho!r}")
            held = self.store.version(update.client_id, unit)
            if not isinstance(version, int) or version < 0 or held != version:
                raise ReplyError(
                    "lbgm-version",
                    f"{unit}: rho against version {version!r}, the server holds {held}",
                )
            reused[unit] = (rho, version)
        full_layers = [n for unit, names in self.units.items() if unit not in reused for n in names]
        sums: PseudoGradients = self.running
        wire = sums.wire(update, full_layers)
        grads: dict[str, np.ndarray | Scaled] = {
            name: sums.layer(wire, name) for name in full_layers
        }
        ages = []
        for unit, (rho, version) in reused.items():
            lbg = self.store.get(update.client_id, unit, version)
            offset = 0
            for name in self.units[unit]:
                shape = self.layers[name]
                grads[name] = Scaled(rho, lbg[offset : offset + math.prod(shape)].reshape(shape))
                offset += math.prod(shape)
            ages.append(self.server_round - version)
        for unit, names in self.units.items():  # the reply is valid: commit its full units
            if unit not in reused:
                flat = [grads[n].reshape(-1) for n in names]
                vector = flat[0] if len(flat) == 1 else np.concatenate(flat)  # never written to
                self.store.put(update.client_id, unit, self.server_round, vector)
        return Decoded(grads, sums.buffer_values(wire), units=len(self.units), ages=ages)

    def round_metrics(self, server_round: int) -> dict[str, Any]:
        payloads = [u.payload for u in self.last_updates]
        units = sum(p.units for p in payloads)
        ages = [a for p in payloads for a in p.ages]
        checked = sum(u.metrics["lbgm-checked"] for u in self.last_updates)
        error_sum = sum(u.metrics["lbgm-phase-error-sum"] for u in self.last_updates)
        return {
            "lbgm_reuse_frac": len(ages) / units if units else None,
            "lbgm_phase_error": error_sum / checked if checked else None,
            "lbgm_lbg_age": float(np.mean(ages)) if ages else None,
            "lbgm_store_bytes": self.store.nbytes,
        }
