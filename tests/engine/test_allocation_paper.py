"""`gvm-paper`: the published rule (RLHFlow/GVM) to the integer.

The hand-computed cases use alpha = 0 and p in {1, 1/4, 1/16}, where the weight
w = G / sqrt(p + alpha / p^(beta - 1)) = G / sqrt(p) is exact in floating point, so every
intermediate number below can be checked by hand. The randomised test compares against a plain
loop re-implementation of the published code (benchmarks/published_rule.py) at the default
alpha, with ties, filters and padding.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

import numpy as np
import pytest
from support import REPO

from budget_service.engine import (
    AllocationParams,
    Estimates,
    InvalidStatisticsError,
    Reason,
    allocate,
    objective,
)
from budget_service.engine.paper import sequential_sum


def paper(p: list[float], g: list[float], budget: int, **kwargs: object) -> list[int]:
    params = AllocationParams(strategy="gvm-paper", alpha=0.0, **kwargs)  # type: ignore[arg-type]
    plan = allocate(Estimates.from_rates(p, g), budget, params)
    samples: list[int] = plan.samples.tolist()
    return samples


def test_shares_follow_the_weights() -> None:
    # w = G (p = 1): shares 1/8, 2/8, 4/8, 1/8 of 16
    assert paper([1, 1, 1, 1], [1, 2, 4, 1], 16) == [2, 4, 8, 2]
    # w = G / sqrt(p) = [1, 2, 4]: shares 1/7, 2/7, 4/7 of 14
    assert paper([1, 0.25, 0.0625], [1, 1, 1], 14) == [2, 4, 8]


def test_rounding_is_half_to_even() -> None:
    # shares 1/4, 3/4 of 10 = 2.5, 7.5 -> np.round gives 2, 8 (not 3, 8 with a fix-up)
    assert paper([1, 1], [1, 3], 10) == [2, 8]


def test_rounding_fix_up_adds_to_the_largest_residuals() -> None:
    # 10 x (0.34, 0.33, 0.33) = 3.4, 3.3, 3.3 -> 3, 3, 3 = 9; one short: +1 where the residual
    # (0.4, 0.3, 0.3) is largest
    assert paper([1, 1, 1], [34, 33, 33], 10) == [4, 3, 3]


def test_rounding_fix_up_takes_from_the_most_negative_residuals() -> None:
    # 10 x (0.365, 0.175, 0.46) = 3.65, 1.75, 4.6 -> 4, 2, 5 = 11; one over: -1 where the residual
    # (-0.35, -0.25, -0.4) is most negative
    assert paper([1, 1, 1], [36.5, 17.5, 46], 10) == [4, 2, 4]


def test_filter_threshold_drops_easy_prompts_then_renormalises() -> None:
    # w = [1, 2, 4]; p = 1 > 0.5 is dropped; 2 : 4 of 9 = 3, 6
    assert paper([1, 0.25, 0.0625], [1, 1, 1], 9, filter_threshold=0.5) == [0, 3, 6]
    # 0 (the published default) means off
    assert paper([1, 0.25, 0.0625], [1, 1, 1], 14, filter_threshold=0.0) == [2, 4, 8]


def test_filter_insufficient_uses_the_first_shares() -> None:
    # shares 1/7, 2/7, 4/7 of N = 14: expected accepted p * share * N = 2, 1, 0.5;
    # below 0.75 is dropped: 1 : 2 of 14 = 4.67, 9.33 -> 5, 9
    assert paper([1, 0.25, 0.0625], [1, 1, 1], 14, filter_insufficient=0.75) == [5, 9, 0]


def test_both_filters_apply_to_the_first_normalisation() -> None:
    # w = [1, 2, 4, 4], shares /11; threshold drops p = 1 (no renormalising yet); then
    # p * share * 22 = -, 1.0, 0.5, 0.5 against 0.75 keeps only the second prompt
    plan = allocate(
        Estimates.from_rates([1, 0.25, 0.0625, 0.0625], [1, 1, 1, 1]),
        22,
        AllocationParams(
            strategy="gvm-paper", alpha=0.0, filter_threshold=0.5, filter_insufficient=0.75
        ),
    )
    assert plan.samples.tolist() == [0, 22, 0, 0]
    assert plan.reasons == [Reason.filtered, Reason.gvm, Reason.filtered, Reason.filtered]
    assert plan.weights.tolist() == [0.0, 1.0, 0.0, 0.0]


def test_alignment_pads_the_largest_prompts_first_cycling() -> None:
    # shares 0.5, 0.3, 0.2 of 10 = 5, 3, 2; padding goes +1 in descending order of n
    assert paper([1, 1, 1], [5, 3, 2], 10) == [5, 3, 2]
    assert paper([1, 1, 1], [5, 3, 2], 10, align_to=4) == [6, 4, 2]  # +2
    assert paper([1, 1, 1], [5, 3, 2], 10, align_to=7) == [7, 4, 3]  # +4: a full round, +1
    assert paper([1, 1, 1], [5, 3, 2], 10, align_to=8) == [7, 5, 4]  # +6: two full rounds
    assert paper([1, 1, 1], [5, 3, 2], 12, align_to=4) == [6, 4, 2]  # already aligned


def test_the_total_exceeds_the_budget_only_by_padding() -> None:
    params = AllocationParams(strategy="gvm-paper", align_to=8)
    plan = allocate(Estimates.from_rates([0.5, 0.2, 0.7], [1.0, 2.0, 1.5]), 10, params)
    assert plan.total == 16
    assert plan.budget == 10
    assert int(plan.samples.sum()) == 16


def test_zero_rate_or_zero_norm_prompts_are_dropped() -> None:
    plan = allocate(
        Estimates.from_rates([0.0, 1.0, 1.0], [1.0, 0.0, 2.0]),
        6,
        AllocationParams(strategy="gvm-paper", min_samples=3, explore_samples=4),
    )
    # bounds and exploration do not apply to the published rule
    assert plan.samples.tolist() == [0, 0, 6]
    assert plan.reasons == [Reason.filtered, Reason.filtered, Reason.gvm]


def test_a_negative_zero_rate_is_a_zero_rate() -> None:
    # the published `p == 0` holds for -0.0 (alpha / -0.0 alone would make the weight NaN)
    g = [1.0, 2.0, 0.5, 3.0]
    params = AllocationParams(strategy="gvm-paper")  # alpha 1e-3, beta 2
    signed = allocate(Estimates.from_rates([0.5, -0.0, 0.25, 1.0], g), 40, params)
    plain = allocate(Estimates.from_rates([0.5, 0.0, 0.25, 1.0], g), 40, params)
    assert signed.samples.tolist() == plain.samples.tolist()
    assert signed.samples[1] == 0
    assert int(signed.samples.sum()) == 40


def test_no_weight_left_falls_back_to_an_even_split() -> None:
    # The published code divides by zero here; we split the budget evenly instead.
    assert paper([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], 7) == [3, 2, 2]
    assert paper([0.9, 0.8], [1.0, 1.0], 5, filter_threshold=0.5) == [3, 2]


def test_predicted_and_uniform_variance_on_the_regularised_objective() -> None:
    # alpha = 0, p = 1: c = G^2; n = [2, 8]: 1/2 + 9/8; uniform [5, 5]: 1/5 + 9/5
    plan = allocate(
        Estimates.from_rates([1.0, 1.0], [1.0, 3.0]),
        10,
        AllocationParams(strategy="gvm-paper", alpha=0.0),
    )
    assert plan.predicted_variance == pytest.approx(0.5 + 9 / 8)
    assert plan.uniform_variance == pytest.approx(0.2 + 1.8)


def _published_rule() -> ModuleType:
    path = REPO / "benchmarks" / "published_rule.py"
    spec = importlib.util.spec_from_file_location("published_rule", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seed", range(4))
def test_same_integers_as_the_published_loop(seed: int) -> None:
    loop_allocation = _published_rule().loop_allocation
    rng = np.random.default_rng(seed)
    checked = 0
    for trial in range(150):
        m = int(rng.integers(1, 400))
        # every third trial: pilot ratios k/8, with many exact ties and zeros
        pilot = trial % 3 == 0
        p = rng.integers(0, 9, m) / 8 if pilot else rng.random(m) * (rng.random(m) > 0.2)
        g = rng.lognormal(0.0, 0.5, m) * (rng.random(m) > 0.05)
        if trial % 4 == 0:
            g = np.round(g, 1)
        budget = int(rng.integers(1, 20 * m))
        kwargs = {
            "filter_threshold": float(rng.choice([0.0, 0.9, 0.6])),
            "filter_insufficient": float(rng.choice([0.0, 0.5, 2.0])),
            "align_to": int(rng.choice([1, 4, 8])),
        }
        try:
            with np.errstate(divide="raise", invalid="raise"):
                expected = loop_allocation(p.tolist(), g.tolist(), budget, **kwargs)
        except (ZeroDivisionError, FloatingPointError):  # no weight left: it fails, we split
            continue
        params = AllocationParams(strategy="gvm-paper", **kwargs)  # type: ignore[arg-type]
        plan = allocate(Estimates.from_rates(p, g), budget, params)
        assert plan.samples.tolist() == expected, (trial, kwargs)
        checked += 1
    assert checked > 100


def _chain(values: np.ndarray) -> float:
    """The published `sum`: one rounding per addition, left to right, in a Python loop."""
    total = 0.0
    for value in values.tolist():
        total += value
    return total


def _hard_sums() -> list[np.ndarray]:
    """Inputs where the order of the additions shows in the last bits: long runs in one binade,
    many binade crossings, halfway cases (ties) few and many, zeros, a jump past 2^53 ulps,
    tiny values, inf, NaN and negatives."""
    rng = np.random.default_rng(7)
    n = 200_000  # the head, several chunks, and crossings inside them
    halves = rng.integers(0, 4, n) * 0.5 + 1e6  # long runs within one binade
    growing = np.geomspace(1e-3, 1e3, n)  # the running sum crosses ~30 binades
    jump = rng.random(n)
    jump[150_000] = 1e30  # one value dwarfing the sum so far
    # From 2^52 on the running sum's spacing is 1: x + 0.5 is a halfway case whose rounding
    # depends on the sum's parity. A few per block (each one's stretch takes the chain), or many.
    sparse_ties = rng.integers(0, 4, n).astype(np.float64)
    sparse_ties[0] = 2.0**52 + 1.0
    sparse_ties[10_001::997] += 0.5
    many_ties = rng.integers(0, 4, n) + 0.5
    many_ties[0] = 2.0**52
    tiny = rng.random(n) * 1e-300
    tiny[100_000:] *= 1e290  # from near-subnormal (too small to scale by) to ordinary
    with_inf = rng.random(n)
    with_inf[123_456] = np.inf
    with_nan = rng.random(n)
    with_nan[99_999] = np.nan
    signed = rng.standard_normal(n)
    pilot = rng.lognormal(0.0, 0.5, n) / np.sqrt(rng.integers(0, 9, n) / 8 + 1e-3)
    pilot[rng.random(n) < 0.3] = 0.0
    return [halves, growing, jump, sparse_ties, many_ties, tiny, with_inf, with_nan, signed, pilot]


@pytest.mark.parametrize("case", range(len(_hard_sums())))
def test_sequential_sum_is_the_plain_chain_bit_for_bit(case: int) -> None:
    values = _hard_sums()[case]
    expected = _chain(values)
    got = sequential_sum(values)
    assert got == expected or (np.isnan(got) and np.isnan(expected)), (got, expected)


@pytest.mark.parametrize("seed", range(12))
def test_sequential_sum_around_halfway_values_and_binade_tops_is_the_chain(seed: int) -> None:
    """Values on coarse binary grids make halfway values common, and a growing sum leaves its
    binade inside blocks: the stretches before each, the chained stretch and the rest of the
    block must add up to the chain's result, from any start."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20_000, 70_000))
    grid = 2.0 ** -int(rng.integers(0, 30))
    values = rng.integers(0, 2**12, n) * grid
    values[rng.random(n) < 0.3] = 0.0
    start = float(rng.choice([0.0, 3.0, float(values.sum()) / 7]))
    expected = _chain(np.concatenate(([start], values)))
    assert sequential_sum(values, start) == expected


def test_the_hard_sums_tell_the_chain_from_numpys_pairwise_sum() -> None:
    # else the test above could not fail for a sum in another order
    differ = [float(np.sum(v)) != _chain(v) for v in _hard_sums() if np.isfinite(_chain(v))]
    assert sum(differ) >= 3, differ


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"filter_threshold": 0.9, "filter_insufficient": 2.0}, {"align_to": 8}],
)
def test_large_batches_give_the_published_integers(kwargs: dict[str, float]) -> None:
    # several of gvm-paper's chunks: the streamed sums, rounding and fix-up at scale
    loop_allocation = _published_rule().loop_allocation
    rng = np.random.default_rng(11)
    m = 150_000
    p = rng.binomial(8, rng.beta(0.3, 0.3, m)) / 8
    g = np.where(p > 0, rng.lognormal(0.0, 0.5, m), 0.0)
    budget = 8 * m + 3
    expected = loop_allocation(p.tolist(), g.tolist(), budget, **kwargs)
    params = AllocationParams(strategy="gvm-paper", **kwargs)  # type: ignore[arg-type]
    plan = allocate(Estimates.from_rates(p, g), budget, params)
    assert plan.samples.tolist() == expected
    c = np.square(g) * p / (np.square(p) + params.alpha)  # c = w^2
    assert plan.predicted_variance == pytest.approx(objective(c, plan.samples), rel=1e-9)
    even = np.full(m, budget // m)
    even[: budget % m] += 1
    assert plan.uniform_variance == pytest.approx(objective(c, even), rel=1e-9)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("p_hat", np.nan),
        ("p_hat", -0.5),  # caught by the weights' total (NaN), not a range check
        ("p_hat", 1.5),
        ("g_hat", np.nan),
        ("g_hat", -1.0),
        ("g_hat", np.inf),  # caught by the weights' total (inf)
    ],
)
def test_bad_values_deep_in_a_large_batch_are_named(field: str, value: float) -> None:
    p, g = np.full(100_000, 0.5), np.ones(100_000)
    (p if field == "p_hat" else g)[70_001] = value
    with pytest.raises(InvalidStatisticsError, match=rf"{field}\[70001\]"):
        allocate(Estimates.from_rates(p, g), 800_000, AllocationParams(strategy="gvm-paper"))
