"""From stored statistics to estimates: raw ratios, prior, empirical-Bayes fit, shrinkage,
decay, posterior expected costs."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from budget_service.engine import AllocationParams, InvalidStatisticsError, regularised_cost
from budget_service.engine.estimates import (
    Estimates,
    PromptStatistics,
    RunTotals,
    decay_factor,
    estimate,
    fit_prior_strength,
    posterior_expected_cost,
    posterior_mean,
    rejected_norm_scale,
)


def stats(
    samples: list[float],
    accepted: list[float],
    norm_sum: list[float] | None = None,
    norm_count: list[float] | None = None,
    last_step: list[int] | None = None,
) -> PromptStatistics:
    m = len(samples)
    return PromptStatistics(
        samples=np.array(samples, dtype=np.float64),
        accepted=np.array(accepted, dtype=np.float64),
        grad_norm_sum=np.array(norm_sum if norm_sum is not None else [0.0] * m, dtype=np.float64),
        grad_norm_count=np.array(
            norm_count if norm_count is not None else [0.0] * m, dtype=np.float64
        ),
        last_step=np.array(last_step if last_step is not None else [0] * m, dtype=np.int64),
    )


def totals_of(s: PromptStatistics, last_step: int = 0) -> RunTotals:
    return RunTotals(
        samples=float(s.samples.sum()),
        accepted=float(s.accepted.sum()),
        grad_norm_sum=float(s.grad_norm_sum.sum()),
        grad_norm_count=float(s.grad_norm_count.sum()),
        last_step=last_step,
    )


def test_decay_factor() -> None:
    assert decay_factor(10, None) == 1.0
    assert decay_factor(0, 5.0) == 1.0
    assert decay_factor(5, 5.0) == 0.5
    assert decay_factor(15, 5.0) == 0.125
    assert decay_factor(-3, 5.0) == 1.0  # a query before the last update: no decay
    np.testing.assert_allclose(decay_factor(np.array([0, 10, 20]), 10.0), [1.0, 0.5, 0.25])
    np.testing.assert_array_equal(decay_factor(np.array([0, 10]), None), [1.0, 1.0])


def test_paper_mode_uses_the_raw_ratios_exactly() -> None:
    s = stats([8, 8, 0, 3.3], [3, 0, 0, 1.1], [2.7, 0, 0, 0.1], [3, 0, 0, 0.7], [4, 9, 0, 2])
    params = AllocationParams(strategy="gvm-paper", prior_strength=5.0, half_life_steps=1.0)
    est = estimate(s, totals_of(s, 9), step=100, params=params)
    # bitwise: accepted / samples and sum / count, no prior, no decay, 0 where undefined
    assert est.p_hat.tolist() == [3 / 8, 0.0, 0.0, 1.1 / 3.3]
    assert est.g_hat.tolist() == [2.7 / 3, 0.0, 0.0, 0.1 / 0.7]
    assert est.expected_cost is None
    assert est.explore is not None
    assert est.explore.tolist() == [False, True, True, False]


def test_prior_strength_zero_gives_raw_ratios_for_gvm_too() -> None:
    s = stats([8, 8, 0], [3, 0, 0], [3.0, 0.0, 0.0], [3, 0, 0])
    est = estimate(s, totals_of(s), step=0, params=AllocationParams(prior_strength=0.0))
    assert est.p_hat.tolist() == [3 / 8, 0.0, 0.0]
    assert est.g_hat.tolist() == [1.0, 1.0, 1.0]  # unknown norms: the pooled mean (3/3)
    assert est.expected_cost is None


def test_unseen_prompts_get_the_prior_centred_on_the_pooled_rate() -> None:
    s = stats([10, 10, 0], [2, 4, 0], [2, 4, 0], [2, 4, 0])
    params = AllocationParams(prior_strength=4.0, fit_prior=False)
    est = estimate(s, totals_of(s), step=0, params=params)
    mu = (6 + 0.5) / (20 + 1)  # pooled rate, smoothed by half a pseudo-success
    assert est.prior_mean == pytest.approx(mu)
    assert est.prior_strength == 4.0
    assert est.p_hat[2] == pytest.approx(mu)  # unseen: the prior mean
    # seen: Beta(mu k + accepted, (1 - mu) k + failures) posterior mean
    assert est.p_hat[0] == pytest.approx((4 * mu + 2) / (4 + 10))
    assert est.p_hat[1] == pytest.approx((4 * mu + 4) / (4 + 10))
    assert est.explore is not None
    assert est.explore.tolist() == [False, False, True]


def test_zero_of_n_is_not_never() -> None:
    s = stats([8, 8, 8, 8], [0, 4, 8, 2], [0, 4, 8, 2], [0, 4, 8, 2])
    est = estimate(s, totals_of(s), step=0, params=AllocationParams(fit_prior=False))
    assert 0.0 < est.p_hat[0] < 0.1
    assert est.expected_cost is not None
    assert est.expected_cost[0] > 0.0
    plan_raw = estimate(s, totals_of(s), step=0, params=AllocationParams(prior_strength=0.0))
    assert plan_raw.p_hat[0] == 0.0


def test_gradient_norms_shrink_toward_the_pooled_mean() -> None:
    # prompt means 1.0 (1 norm), 3.0 (9 norms); pooled (1 + 27) / 10 = 2.8
    s = stats([4, 20, 4], [1, 9, 0], [1.0, 27.0, 0.0], [1, 9, 0])
    est = estimate(s, totals_of(s), step=0, params=AllocationParams(grad_prior_strength=2.0))
    pooled = 2.8
    assert est.g_hat[0] == pytest.approx((1.0 + 2 * pooled) / 3)
    assert est.g_hat[1] == pytest.approx((27.0 + 2 * pooled) / 11)
    assert est.g_hat[2] == pytest.approx(pooled)  # no norms yet: the pooled mean
    # more norms pull harder toward the prompt's own mean
    assert abs(est.g_hat[1] - 3.0) < abs(est.g_hat[0] - 1.0)
    # no shrinkage: the prompts' own means
    raw = estimate(s, totals_of(s), step=0, params=AllocationParams(grad_prior_strength=0.0))
    assert raw.g_hat.tolist() == [1.0, 3.0, pooled]


def test_a_run_without_gradient_norms_allocates_from_acceptance_alone() -> None:
    s = stats([8, 8], [1, 6])  # e.g. verl reports no norms
    est = estimate(s, totals_of(s), step=0, params=AllocationParams())
    assert est.g_hat.tolist() == [1.0, 1.0]


def test_read_time_decay_equals_decaying_the_counts() -> None:
    half_life = 10.0
    s = stats([8, 16, 4], [2, 12, 1], [2, 12, 1], [2, 12, 1], last_step=[30, 20, 40])
    totals = totals_of(s, last_step=40)
    params = AllocationParams(half_life_steps=half_life, fit_prior=False)
    est = estimate(s, totals, step=40, params=params)
    # by hand: scale each prompt by 0.5 ** ((40 - last) / 10) and query at its own step
    f = np.array([0.5, 0.25, 1.0])
    manual = PromptStatistics(
        s.samples * f,
        s.accepted * f,
        s.grad_norm_sum * f,
        s.grad_norm_count * f,
        np.full(3, 40, np.int64),
    )
    ref = estimate(manual, totals, step=40, params=params)
    np.testing.assert_allclose(est.p_hat, ref.p_hat, rtol=1e-12)
    np.testing.assert_allclose(est.g_hat, ref.g_hat, rtol=1e-12)
    assert est.expected_cost is not None
    assert ref.expected_cost is not None
    np.testing.assert_allclose(est.expected_cost, ref.expected_cost, rtol=1e-12)
    # old evidence weighs less: the prompt seen 20 steps ago moved toward the prior mean
    fresh = estimate(s, totals, step=40, params=AllocationParams(fit_prior=False))
    assert abs(est.p_hat[1] - est.prior_mean) < abs(fresh.p_hat[1] - fresh.prior_mean)


def test_totals_decay_to_the_query_step() -> None:
    s = stats([10], [9])
    params = AllocationParams(half_life_steps=5.0, fit_prior=False)
    at_5 = estimate(s, RunTotals(100.0, 10.0, 0, 0, last_step=0), step=5, params=params)
    assert at_5.prior_mean == pytest.approx((10 * 0.5 + 0.5) / (100 * 0.5 + 1))


def test_fitted_prior_tracks_the_spread_of_rates() -> None:
    rng = np.random.default_rng(0)
    n = np.full(2000, 8.0)
    u_shaped = rng.binomial(8, rng.beta(0.3, 0.3, 2000)).astype(float)
    kappa = fit_prior_strength(n, u_shaped)
    assert kappa is not None
    assert 0.4 < kappa < 0.9
    uniform = rng.binomial(8, rng.random(2000)).astype(float)
    kappa = fit_prior_strength(n, uniform)
    assert kappa is not None
    assert 1.5 < kappa < 2.6
    # same rate everywhere: the spread is all binomial noise, the prior is as strong as allowed
    same = rng.binomial(8, np.full(2000, 0.3)).astype(float)
    strong = fit_prior_strength(n, same)
    assert strong is not None
    assert strong >= 100.0
    # too few prompts with two or more samples: no fit
    assert fit_prior_strength(np.full(10, 8.0), u_shaped[:10]) is None
    assert fit_prior_strength(np.ones(100), u_shaped[:100].clip(0, 1)) is None
    assert fit_prior_strength(n, np.zeros(2000)) is None


def test_estimate_uses_the_fit_when_the_batch_allows_and_prior_strength_otherwise() -> None:
    rng = np.random.default_rng(1)
    k = rng.binomial(8, rng.beta(0.3, 0.3, 256)).astype(float)
    s = stats([8.0] * 256, k.tolist())
    fitted = estimate(s, totals_of(s), step=0, params=AllocationParams())
    assert fitted.prior_strength < 1.0
    fixed = estimate(s, totals_of(s), step=0, params=AllocationParams(fit_prior=False))
    assert fixed.prior_strength == 2.0
    small = stats([8.0] * 5, k[:5].tolist())
    assert estimate(small, totals_of(small), 0, AllocationParams()).prior_strength == 2.0


def test_expected_cost_under_a_u_shaped_prior_keeps_unsolved_prompts_in_play() -> None:
    """0/8 under a U-shaped prior still puts real mass near the cost's peak p* ~ 0.03: the
    expected cost is far above the plug-in cost at the posterior mean."""
    alpha, beta = 1e-3, 2.0
    h = posterior_expected_cost(np.array([0.3]), np.array([8.3]), alpha, beta)[0]
    mean = 0.3 / 8.6
    assert h > 0.0
    assert h != pytest.approx(regularised_cost(np.array([mean]), 1.0, alpha, beta)[0], rel=0.05)
    # many observations: the posterior is sharp, expectation -> plug-in
    sharp = posterior_expected_cost(np.array([300.0]), np.array([700.0]), alpha, beta)[0]
    plug_in = regularised_cost(np.array([0.3]), 1.0, alpha, beta)[0]
    assert sharp == pytest.approx(plug_in, rel=5e-3)


def _reference(a: float, b: float, fn: object) -> float:
    """Dense trapezoid in logit space over a range wide enough for tiny a and b."""
    x = np.linspace(-3000.0, 3000.0, 3_000_001)
    softplus = np.logaddexp(0.0, x)
    logw = -a * (softplus - x) - b * softplus
    w = np.exp(logw - logw.max())
    p = np.exp(x - softplus)
    values = fn(p)  # type: ignore[operator]
    return float((w * values).sum() / w.sum())


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (0.3, 8.3),
        (0.3, 0.3),
        (8.3, 0.3),
        (1, 1),
        (100, 100),
        (0.05, 10),
        (2.5, 500),
        (30, 1),
        (0.01, 0.05),
        (4, 4000),
        (0.2, 1),
    ],
)
@pytest.mark.parametrize("beta", [1.0, 1.5, 2.0, 3.0])
def test_posterior_expected_cost_matches_a_dense_reference(a: float, b: float, beta: float) -> None:
    got = posterior_expected_cost(np.array([a]), np.array([b]), 1e-3, beta)[0]
    ref = _reference(a, b, lambda p: regularised_cost(p, 1.0, 1e-3, beta))
    assert got == pytest.approx(ref, rel=2e-3)


def test_posterior_mean_matches_closed_forms() -> None:
    a = np.array([0.5, 2.0, 3.0, 40.0, 0.05])
    b = np.array([0.5, 7.0, 1.5, 2.0, 3.0])
    np.testing.assert_allclose(posterior_mean(a, b, lambda p: p), a / (a + b), rtol=1e-5)
    np.testing.assert_allclose(
        posterior_mean(a, b, lambda p: p * (1 - p)), a * b / ((a + b) * (a + b + 1)), rtol=1e-5
    )
    # alpha = 0, beta = 2: c = 1/p, E[1/p] = (a + b - 1) / (a - 1) for a > 1 (unbounded at
    # p = 0, the hardest case for the closed-form tails)
    got = posterior_expected_cost(np.array([3.0, 10.0]), np.array([5.0, 2.0]), 0.0, 2.0)
    np.testing.assert_allclose(got, [7 / 2, 11 / 9], rtol=1e-3)


def test_repeated_pairs_are_computed_once_and_agree() -> None:
    rng = np.random.default_rng(2)
    a = rng.integers(0, 9, 5000) + 0.3
    b = 8.6 - a + 0.3
    many = posterior_expected_cost(a, b, 1e-3, 2.0)  # deduplicated path
    few = np.array(
        [posterior_expected_cost(a[i : i + 1], b[i : i + 1], 1e-3, 2.0)[0] for i in range(20)]
    )
    np.testing.assert_allclose(many[:20], few, rtol=1e-12)


def test_grpo_cost_is_the_posterior_chance_of_a_mixed_pair() -> None:
    s = stats([8, 8, 8], [0, 4, 8], [0, 4, 8], [0, 4, 8])
    params = AllocationParams(algo="grpo", fit_prior=False)
    est = estimate(s, totals_of(s), step=0, params=params)
    a = est.prior_mean * 2 + np.array([0, 4, 8])
    b = (1 - est.prior_mean) * 2 + 8 - np.array([0, 4, 8])
    assert est.expected_cost is not None
    np.testing.assert_allclose(
        est.expected_cost, a * b / ((a + b) * (a + b + 1)) * est.g_hat**2, rtol=1e-12
    )
    assert est.expected_cost[1] > est.expected_cost[0]
    assert est.cost_key == (1e-3, 2.0, "grpo")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("samples", math.nan, r"stats.samples\[1\] = nan"),
        ("accepted", -1.0, r"stats.accepted\[1\] = -1.0"),
        ("grad_norm_sum", math.inf, r"stats.grad_norm_sum\[1\] = inf"),
        ("accepted", 9.0, r"stats.accepted\[1\] = 9.0 exceeds samples = 8.0"),
    ],
)
def test_invalid_statistics_name_the_field(field: str, value: float, match: str) -> None:
    s = stats([8, 8], [1, 2], [1, 2], [1, 2])
    getattr(s, field)[1] = value
    with pytest.raises(InvalidStatisticsError, match=match) as info:
        estimate(s, totals_of(stats([8], [1])), step=0, params=AllocationParams())
    assert info.value.field == f"stats.{field}"


def test_invalid_totals_and_shapes_are_rejected() -> None:
    s = stats([8, 8], [1, 2])
    with pytest.raises(InvalidStatisticsError, match=r"totals\.samples") as info:
        estimate(s, RunTotals(samples=-1.0), step=0, params=AllocationParams())
    assert info.value.field == "totals.samples"
    bad = PromptStatistics(
        s.samples, s.accepted[:1], s.grad_norm_sum, s.grad_norm_count, s.last_step
    )
    with pytest.raises(InvalidStatisticsError, match=r"stats\.accepted has shape"):
        estimate(bad, RunTotals(), step=0, params=AllocationParams())


def test_from_rates_and_the_explore_mask() -> None:
    est = Estimates.from_rates([0.0, 0.5], [1.0, 2.0])
    assert est.explore_mask().tolist() == [True, False]
    assert PromptStatistics.unseen(3).samples.tolist() == [0.0, 0.0, 0.0]
    assert len(PromptStatistics.unseen(3)) == 3


def test_rejected_norms_set_the_g_of_prompts_without_accepted_ones() -> None:
    """Rejected samples' norms, put on the accepted norms' scale (fitted within the prompts that
    have both kinds), give a 0/8 prompt a G of its own; gvm-paper keeps the published rule."""
    rng = np.random.default_rng(3)
    m = 40
    g_true = rng.lognormal(0.0, 0.5, m)
    accepted = np.where(np.arange(m) < 30, 4.0, 0.0)  # the last 10 prompts: 0 of 8 accepted
    rejected = 8.0 - accepted
    # Rejected samples' norms run at half the accepted ones' (the scale the fit must find).
    base = stats([8.0] * m, accepted.tolist(), (g_true * accepted).tolist(), accepted.tolist())
    with_rejected = dataclasses.replace(
        base, rejected_grad_norm_sum=0.5 * g_true * rejected, rejected_grad_norm_count=rejected
    )
    totals = RunTotals(
        samples=8.0 * m,
        accepted=float(accepted.sum()),
        grad_norm_sum=float((g_true * accepted).sum()),
        grad_norm_count=float(accepted.sum()),
        rejected_grad_norm_sum=float((0.5 * g_true * rejected).sum()),
        rejected_grad_norm_count=float(rejected.sum()),
    )
    params = AllocationParams()
    scale = rejected_norm_scale(
        base.grad_norm_sum, base.grad_norm_count, *with_rejected.rejected_norms(), totals
    )
    assert scale == pytest.approx(2.0)

    without = estimate(base, totals, 0, params).g_hat
    informed = estimate(with_rejected, totals, 0, params).g_hat
    pooled = totals.grad_norm_sum / totals.grad_norm_count
    np.testing.assert_allclose(without[30:], pooled)  # nothing tells the unsolved apart
    # Every prompt now has 8 norms on one scale (4 + 2 x 2 x 4 rejected, or 2 x 0.5 x 8),
    # shrunk toward the pooled norm by grad_prior_strength pseudo-norms.
    strength = params.grad_prior_strength
    np.testing.assert_allclose(informed, (8 * g_true + strength * pooled) / (8 + strength))

    paper = AllocationParams(strategy="gvm-paper")
    np.testing.assert_array_equal(
        estimate(with_rejected, totals, 0, paper).g_hat, estimate(base, totals, 0, paper).g_hat
    )


def test_rejected_norms_alone_set_the_scale() -> None:
    """A run that reports only rejected samples' norms still gets per-prompt G (scale 1)."""
    base = stats([8.0, 8.0], [0.0, 0.0])
    with_rejected = dataclasses.replace(
        base,
        rejected_grad_norm_sum=np.array([8.0, 24.0]),
        rejected_grad_norm_count=np.array([8.0, 8.0]),
    )
    totals = RunTotals(samples=16.0, rejected_grad_norm_sum=32.0, rejected_grad_norm_count=16.0)
    g_hat = estimate(with_rejected, totals, 0, AllocationParams()).g_hat
    assert estimate(base, totals, 0, AllocationParams()).g_hat.tolist() == [2.0, 2.0]  # pooled
    assert g_hat[0] < 2.0 < g_hat[1]  # around the pooled 2.0, each toward its own 1 and 3
