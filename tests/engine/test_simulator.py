"""The learning simulator (benchmarks/simulator.py) and its statistics (benchmarks/stats.py)."""

from __future__ import annotations

import json
import math
import sys
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from support import REPO

from budget_service.engine import AllocationParams, Estimates, allocate

BENCHMARKS = REPO / "benchmarks"


@pytest.fixture(scope="module")
def modules() -> tuple[ModuleType, ModuleType]:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import simulator
        import stats
    finally:
        sys.path.remove(str(BENCHMARKS))
    return simulator, stats


@pytest.fixture(scope="module")
def small(modules: tuple[ModuleType, ModuleType]) -> tuple[object, dict[str, object]]:
    sim = modules[0]
    settings = sim.Settings(pool=128, batch=16, held_out=64)
    return settings, sim.simulate(settings, seeds=6, block=4)


def test_every_arm_counts_exactly_its_budget(small: tuple[object, dict[str, object]], modules):
    settings, results = small
    sim = modules[0]
    for arm in sim.ARMS:
        r = results[arm.name]
        assert (r.counted == settings.budget).all(), arm.name
        pilot = settings.pilot * settings.batch if arm.pilot else 0
        extra = 0 if arm.pilot_counted else pilot
        assert (r.generated == settings.budget + extra).all(), arm.name
        assert r.held_out.shape == (6, settings.steps + 1)
        assert r.by_level.sum() == r.generated.sum()


def test_arms_are_paired_on_the_same_start(small: tuple[object, dict[str, object]]):
    _, results = small
    starts = [r.held_out[:, 0] for r in results.values()]
    for start in starts[1:]:
        np.testing.assert_array_equal(start, starts[0])


def test_uniform_arm_is_the_engines_uniform(modules):
    sim = modules[0]
    p, g = np.linspace(0.01, 0.9, 24), np.ones(24)
    mine = sim.allocation(sim.ARMS[0], 100, 0, None, None, np.zeros(24, np.int64), p, g)
    ones = Estimates.from_rates(np.ones(24), np.ones(24))
    np.testing.assert_array_equal(mine, allocate(ones, 100, AllocationParams("uniform")).samples)


def test_filter_only_spends_on_solved_prompts_alone(modules):
    sim = modules[0]
    solved = np.array([0, 3, 0, 1, 2, 0], np.int64)
    n = sim.allocation(sim.ARMS[1], 30, 0, None, None, solved, np.full(6, 0.3), np.ones(6))
    assert n.sum() == 30
    assert (n[solved == 0] == 0).all()
    assert (n[solved > 0] == 10).all()


def test_level_fit_recovers_a_known_beta(modules):
    sim = modules[0]
    a, b = 0.13 * 11.0, 0.87 * 11.0
    rng = np.random.default_rng(0)
    p = rng.beta(a, b, 400_000)
    k = rng.binomial(16, p)
    mixed = float(np.mean((k > 0) & (k < 16)))
    fa, fb = sim.fit_level(0.13, mixed)
    assert fa + fb == pytest.approx(11.0, rel=0.1)


def test_sign_flip_test_sees_a_constructed_shift_and_not_its_absence(modules):
    stats = modules[1]
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(40)
    assert stats.sign_flip_test(noise + 1.0, resamples=20_000) < 1e-3
    assert stats.sign_flip_test(noise - noise.mean(), resamples=20_000) > 0.9
    # exact for few seeds: 6 positive differences of 6 is 2 of 64 sign patterns
    assert stats.sign_flip_test([1.0, 2.0, 1.5, 0.5, 1.0, 3.0]) == pytest.approx(2 / 64)


def test_bootstrap_interval_covers_a_known_ratio(modules):
    stats = modules[1]
    rng = np.random.default_rng(2)
    x = np.linspace(0.0, 1000.0, 21)
    uniform = x / 1000.0 + 0.02 * rng.standard_normal((30, 21))
    faster = np.minimum(x / 600.0, 1.4) + 0.02 * rng.standard_normal((30, 21))
    interval = stats.bootstrap_ratio(x, faster, uniform, resamples=500)
    assert interval.low <= 0.6 <= interval.high
    assert interval.high - interval.low < 0.1
    assert stats.samples_ratio(x, uniform[:, :10], uniform) == math.inf  # never reached


def test_auc_and_holm_on_known_inputs(modules):
    stats = modules[1]
    x = np.array([0.0, 1.0, 3.0])
    np.testing.assert_allclose(stats.auc(x, np.array([[0.0, 1.0, 1.0]])), [2.5 / 3])
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.samples_to_reach(x, np.array([0.0, 0.5, 1.0]), 0.75) == pytest.approx(2.0)


def test_docs_tables_are_the_committed_results(modules):
    """docs/benchmarks.md "Learning simulator" shows what the results files hold."""
    from support.readme import DOCS, RESULTS, section

    sim = modules[0]
    payloads = {
        stem: json.loads((RESULTS / f"{stem}.json").read_text()) for stem, _ in sim.LEARNERS
    }
    text = section(DOCS / "benchmarks.md", "Learning simulator")
    for table in sim.docs_tables(payloads):
        assert table in text
    main = payloads["simulator"]
    assert main["settings"]["pool"] >= 1024
    assert main["settings"]["held_out"] >= 256
    run = f"{main['seconds_simulation']:.0f} s of simulation and {main['seconds_total']:.0f} s"
    assert f"({main['seeds']:,} seeds, {len(sim.ARMS)} arms: {run} in all" in text


@pytest.mark.parametrize("name", ["gvm, pilot as drawn", "knapsack", "gvm, 3 rounds"])
def test_topup_arms_spend_their_budget_on_top_of_what_the_step_drew(
    name: str, modules, monkeypatch: pytest.MonkeyPatch
):
    """The pilot told as drawn, and every round after the first, go to the engine as top-ups:
    `drawn` is what each prompt drew so far this step, the plan the additional samples, and the
    rounds together spend exactly the step's budget."""
    sim = modules[0]
    settings = sim.Settings(pool=64, batch=16, held_out=32)
    arm = next(a for a in sim.ARMS if a.name == name)
    calls: list[tuple[Any, ...]] = []

    def spy(estimates, budget, params, drawn=None, drawn_accepted=None):
        plan = allocate(estimates, budget, params, drawn=drawn, drawn_accepted=drawn_accepted)
        calls.append((budget, params, drawn, drawn_accepted, plan.samples))
        return plan

    monkeypatch.setattr(sim, "allocate", spy)
    seeds = 3
    result = sim.simulate(settings, seeds=seeds, arms=(sim.ARMS[0], arm), block=seeds)[name]
    assert (result.counted == settings.budget).all()
    assert (result.generated == settings.budget).all()
    mine = calls[seeds * settings.steps :]  # uniform's calls first
    strategy = "knapsack" if name == "knapsack" else "gvm"
    assert all(params.strategy == strategy for _, params, *_ in mine)
    pilot = settings.pilot * settings.batch
    if arm.rounds:  # 2 per prompt, 4 more told the first round, the rest told both
        budgets = [2 * settings.batch, 4 * settings.batch, settings.budget - 6 * settings.batch]
        assert len(mine) == 3 * seeds * settings.steps
        for i in range(len(mine) // 3):  # per step: round 1 of every seed, then round 2, ...
            step, seed = divmod(i, seeds)
            first, second, last = mine[3 * seeds * step + seed :: seeds][:3]
            assert [c[0] for c in (first, second, last)] == budgets
            assert first[2] is None
            assert first[3] is None
            np.testing.assert_array_equal(second[2], first[4])
            np.testing.assert_array_equal(last[2], first[4] + second[4])
            for budget, _, drawn, accepted, samples in (first, second, last):
                assert samples.sum() == budget
                assert accepted is None or (accepted <= drawn).all()
    else:  # one top-up of the pilot: 8 per prompt drawn, the rest of the budget added
        assert len(mine) == seeds * settings.steps
        for budget, _, drawn, accepted, samples in mine:
            assert budget == settings.budget - pilot
            np.testing.assert_array_equal(drawn, np.full(settings.batch, settings.pilot))
            assert accepted is not None
            assert (accepted <= drawn).all()
            assert samples.sum() == budget
            assert (samples >= 0).all()
