"""WeightedSum: the exact weighted mean, folded in client order, the same bits on threads."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.numeric import slices
from strategies.numeric.weighted_sum import WeightedSum, cast_like


def weighted_mean(arrays: list[dict[str, np.ndarray]], weights: list[int]) -> dict[str, np.ndarray]:
    """The weighted average as the strategies take it: folded in order, cast like the inputs."""
    total = WeightedSum()
    for values, weight in zip(arrays, weights, strict=True):
        total.add(values, weight)
    return cast_like(total.mean(), arrays[0])


def test_weighted_average_by_hand() -> None:
    a = {"w": np.array([1.0, 2.0, 4.0], dtype=np.float64), "b": np.array([[0.0]], dtype=np.float64)}
    b = {"w": np.array([3.0, 6.0, 0.0], dtype=np.float64), "b": np.array([[8.0]], dtype=np.float64)}
    result = weighted_mean([a, b], [1, 3])
    np.testing.assert_array_equal(result["w"], [2.5, 5.0, 1.0])  # (1*a + 3*b) / 4
    np.testing.assert_array_equal(result["b"], [[6.0]])
    assert list(result) == ["w", "b"]


def test_weighted_average_equal_weights_is_the_mean() -> None:
    arrays = [{"x": np.array([v], dtype=np.float64)} for v in (1.0, 2.0, 6.0)]
    np.testing.assert_array_equal(weighted_mean(arrays, [5, 5, 5])["x"], [3.0])


def test_weighted_average_single_client_is_identity() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    result = weighted_mean([{"x": x}], [13])
    assert result["x"].dtype == np.float32
    np.testing.assert_array_equal(result["x"], x)


def test_weighted_average_rounds_integer_arrays_and_keeps_dtypes() -> None:
    a = {"count": np.array([1], dtype=np.int64), "u": np.array([10, 0], dtype=np.uint8)}
    b = {"count": np.array([2], dtype=np.int64), "u": np.array([20, 3], dtype=np.uint8)}
    result = weighted_mean([a, b], [1, 3])
    assert result["count"].dtype == np.int64 and result["count"].shape == (1,)
    np.testing.assert_array_equal(result["count"], [2])  # 0.25*1 + 0.75*2 = 1.75 -> 2
    assert result["u"].dtype == np.uint8
    np.testing.assert_array_equal(result["u"], [18, 2])  # 17.5 -> 18 (half to even), 2.25 -> 2


@pytest.mark.parametrize("min_slice", [1, 7, 1 << 30])
def test_weighted_average_in_slices_gives_the_same_bits_as_one_loop(
    monkeypatch: pytest.MonkeyPatch, min_slice: int
) -> None:
    """However the parameters are sliced over threads, every element sums the same clients in
    the same order: the result equals a plain per-client loop bit for bit."""
    monkeypatch.setattr(slices, "MIN_SLICE", min_slice)
    monkeypatch.setattr(slices, "THREADS", 4)
    rng = np.random.default_rng(0)
    arrays = [
        {"w": rng.standard_normal((5, 9)).astype(np.float32), "n": np.array(int(c))}
        for c in rng.integers(0, 50, size=30)
    ]
    weights = [int(w) for w in rng.integers(1, 100, size=30)]
    expected = np.zeros((5, 9))
    for values, weight in zip(arrays, weights, strict=True):
        expected += values["w"].astype(np.float64) * weight  # exact products, summed in order
    result = weighted_mean(arrays, weights)
    np.testing.assert_array_equal(result["w"], (expected / sum(weights)).astype(np.float32))
    assert result["w"].dtype == np.float32 and result["n"].shape == ()


def test_weighted_average_keeps_zero_dim_float_arrays() -> None:
    result = weighted_mean([{"t": np.array(1.0)}, {"t": np.array(4.0)}], [2, 1])
    assert isinstance(result["t"], np.ndarray) and result["t"].shape == ()
    assert float(result["t"]) == 2.0


def test_weighted_average_keeps_zero_dim_integer_arrays() -> None:
    a, b = {"count": np.array(1, dtype=np.int64)}, {"count": np.array(2, dtype=np.int64)}
    result = weighted_mean([a, b], [1, 3])
    assert isinstance(result["count"], np.ndarray)
    assert result["count"].dtype == np.int64 and result["count"].shape == ()
    assert int(result["count"]) == 2


def test_weighted_average_keeps_float32() -> None:
    a = {"w": np.array([1.0, 3.0], dtype=np.float32)}
    b = {"w": np.array([2.0, 5.0], dtype=np.float32)}
    result = weighted_mean([a, b], [1, 1])
    assert result["w"].dtype == np.float32
    np.testing.assert_array_equal(result["w"], np.array([1.5, 4.0], dtype=np.float32))


def test_merged_partial_sums_agree_with_one_by_one_within_float64_rounding() -> None:
    """Cohorts' float64 partial sums, merged in cohort order, give the one-by-one mean up to the
    order of float64 additions: below 1e-15 relative in float64, and float32 means equal or one
    step apart; the weight is the total weight."""
    rng = np.random.default_rng(7)
    arrays = [{"w": rng.normal(size=(64, 33)).astype(np.float32)} for _ in range(24)]
    weights = [int(w) for w in rng.integers(1, 500, size=24)]
    one_by_one = WeightedSum()
    for values, weight in zip(arrays, weights, strict=True):
        one_by_one.add(values, weight)
    merged = WeightedSum()
    for start in range(0, 24, 5):  # cohorts of 5 (the last of 4)
        cohort = WeightedSum()
        for client in range(start, min(start + 5, 24)):
            cohort.add(arrays[client], weights[client])
        merged.merge(cohort.partial(), cohort.weight)
    assert merged.weight == one_by_one.weight == sum(weights)
    exact, reduced = one_by_one.mean()["w"], merged.mean()["w"]
    np.testing.assert_allclose(reduced, exact, rtol=1e-15, atol=1e-15)
    steps = np.abs(
        reduced.astype(np.float32).view(np.int32).astype(np.int64)
        - exact.astype(np.float32).view(np.int32).astype(np.int64)
    )
    assert steps.max() <= 1


def test_merging_one_partial_into_an_empty_sum_is_that_sum_and_a_misfit_is_refused() -> None:
    cohort = WeightedSum()
    cohort.add({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, 3)
    merged = WeightedSum()
    merged.merge(cohort.partial(), cohort.weight)
    np.testing.assert_array_equal(merged.mean()["w"], cohort.mean()["w"])
    assert merged.mean()["w"].shape == (2, 3)
    with pytest.raises(ValueError, match="partial sum of 5 entries, not 6"):
        merged.merge({"w": np.zeros(5)}, 1)
