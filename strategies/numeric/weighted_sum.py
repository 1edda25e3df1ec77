"""The weighted mean Σ_c w_c·x_c / Σ_c w_c, folded one client at a time.

Streaming strategies (FedAvg, LIPS, LBGM, top-k, signSGD) add each client's update as soon as
the clients before it are in, so the server never holds a round's updates together. A GPU node
reducing its cohort keeps its sum on the device (:class:`TensorWeightedSum`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from strategies.numeric.slices import for_each_slice


class WeightedSum:
    """Σ_c w_c·x_c per name, added one client at a time, and the mean Σ_c w_c·x_c / Σ_c w_c.

    The server folds each client's update in as soon as the clients before it are in, so it
    never holds a round's updates together. A float32 value times an integer weight is exact
    in float64, so the only roundings are the running float64 sum, taken in client-id order
    (the same bits whatever the cohort size), and the final division. Large arrays are added
    in slices on threads, which gives the same bits (see :mod:`strategies.numeric.slices`).
    """

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.weight = 0

    def add(self, values: Mapping[str, Any], weight: int) -> None:
        """Add ``weight`` times each array of ``values`` (arrays, or anything that reshapes and
        slices like one, such as LBGM's lazily rebuilt layers)."""
        for name, value in values.items():
            if isinstance(value, torch.Tensor):  # a device update in a host sum
                value = value.cpu().numpy()
            flat = value.reshape(-1)
            if name not in self.sums:
                self.sums[name] = np.zeros(flat.size, dtype=np.float64)
                self.shapes[name] = tuple(value.shape)
            acc = self.sums[name]

            def accumulate(part: slice, acc: np.ndarray = acc, flat: Any = flat) -> None:
                acc[part] += np.multiply(flat[part], weight, dtype=np.float64)

            for_each_slice(flat.size, accumulate)
        self.weight += weight

    def partial(self) -> dict[str, np.ndarray]:
        """The float64 sums Σ_c w_c·x_c so far, in the arrays' shapes (views, not copies)."""
        return {name: acc.reshape(self.shapes[name]) for name, acc in self.sums.items()}

    def merge(self, sums: Mapping[str, np.ndarray], weight: int) -> None:
        """Add another sum's :meth:`partial` (a node's sum over its cohort) and its weight:
        only the order of the float64 additions differs from adding its clients one by one."""
        for name, value in sums.items():
            flat = np.asarray(value, dtype=np.float64).reshape(-1)
            if name not in self.sums:
                self.sums[name] = np.zeros(flat.size, dtype=np.float64)
                self.shapes[name] = tuple(np.shape(value))
            elif flat.size != self.sums[name].size:
                expected = self.sums[name].size
                raise ValueError(f"{name}: a partial sum of {flat.size} entries, not {expected}")
            acc = self.sums[name]

            def accumulate(part: slice, acc: np.ndarray = acc, flat: np.ndarray = flat) -> None:
                acc[part] += flat[part]

            for_each_slice(flat.size, accumulate)
        self.weight += weight

    def mean(self) -> dict[str, np.ndarray]:
        """The weighted mean per name, in float64 and the arrays' shapes."""
        return {
            name: (acc / self.weight).reshape(self.shapes[name]) for name, acc in self.sums.items()
        }


def cast_like(
    means: dict[str, np.ndarray], like: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Each mean in the dtype of the same name in ``like``; integers rounded to the nearest."""
    cast = {}
    for name, mean in means.items():
        if like[name].dtype.kind in "iu":
            mean = np.rint(mean, out=np.empty_like(mean))  # stays an array when 0-d
        cast[name] = mean.astype(like[name].dtype)
    return cast


class TensorWeightedSum:
    """:class:`WeightedSum` with its float64 sums held as tensors on one device (a GPU node's
    cohort): each update is added where it was trained, and only the partial sum leaves.

    The same bits as :class:`WeightedSum` in the same client order: a float32 value times an
    integer weight is exact in float64, so each addition rounds once on either side.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.weight = 0

    def add(self, values: Mapping[str, Any], weight: int) -> None:
        """Add ``weight`` times each array or tensor of ``values``."""
        for name, value in values.items():
            flat = torch.as_tensor(value, device=self.device).reshape(-1).to(torch.float64)
            if name not in self.sums:
                self.sums[name] = torch.zeros_like(flat)
                self.shapes[name] = tuple(value.shape)
            self.sums[name].add_(flat, alpha=weight)
        self.weight += weight

    def partial(self) -> dict[str, np.ndarray]:
        """The float64 sums so far, copied to the host in the arrays' shapes."""
        return {
            name: acc.reshape(self.shapes[name]).cpu().numpy() for name, acc in self.sums.items()
        }

    def merge(self, sums: Mapping[str, np.ndarray], weight: int) -> None:
        """Add another sum's :meth:`partial` and its weight."""
        for name, value in sums.items():
            flat = torch.as_tensor(np.asarray(value, dtype=np.float64), device=self.device)
            if name not in self.sums:
                self.sums[name] = torch.zeros_like(flat.reshape(-1))
                self.shapes[name] = tuple(np.shape(value))
            self.sums[name].add_(flat.reshape(-1))
        self.weight += weight

    def mean(self) -> dict[str, np.ndarray]:
        """The weighted mean per name, in float64 on the host."""
        return {name: values / self.weight for name, values in self.partial().items()}
