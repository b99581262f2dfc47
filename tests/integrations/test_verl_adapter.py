"""The verl adapter (trainer_client.integrations.verl).

The framework-free parts run here. The adapter itself needs verl 0.7.1, which cannot share the
main environment (it pins numpy<2), so the slow test runs tests/integrations/verl_adapter_checks.py
inside .venv-verl (built by `bash .ci/verl-env`) against the live service. In CI a missing
.venv-verl is a failure, not a skip.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import REPO
from support.venv_checks import run_checks

from budget_service.engine import (
    AllocationParams,
    PromptStatistics,
    RunTotals,
    allocate,
    estimate,
)
from trainer_client.integrations._batch import copies_from_counts, observations_from_rows

VERL_PYTHON = REPO / ".venv-verl" / "bin" / "python"


# --- samples -> copies ----------------------------------------------------------------------


def test_counts_in_multiples_of_rollout_n_become_exact_copies() -> None:
    # budget 4 rows x rollout.n 8 = 32 samples
    assert copies_from_counts([16, 8, 0, 8], 4) == [2, 1, 0, 1]
    assert copies_from_counts([8, 8, 8, 8], 4) == [1, 1, 1, 1]


def test_remainders_go_to_the_largest_fractions_then_the_earliest() -> None:
    # quotas 1.75, 0.5, 0.5, 1.25 -> floors 1, 0, 0, 1; two rows left: 0.75, then the first 0.5
    assert copies_from_counts([7, 2, 2, 5], 4) == [2, 1, 0, 1]
    assert copies_from_counts([1, 1, 1], 2) == [1, 1, 0]


def test_the_rows_always_add_up_even_when_the_service_spent_less() -> None:
    # The service may answer a total below the budget (alignment, bounds): rows still fill.
    for counts, slots in (([3, 11, 10, 8], 4), ([1, 0, 0], 5), ([5, 5, 5, 5, 5, 5, 5], 3)):
        copies = copies_from_counts(counts, slots)
        assert sum(copies) == slots
        assert all(k >= 0 for k in copies)


def test_all_zero_counts_give_the_even_split() -> None:
    assert copies_from_counts([0, 0, 0], 2) == [1, 1, 0]
    assert copies_from_counts([0, 0], 2) == [1, 1]
    assert copies_from_counts([], 0) == []


def test_negative_input_is_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        copies_from_counts([1, -1], 2)


# --- rows -> observations ---------------------------------------------------------------------


def test_rows_of_all_copies_of_a_prompt_make_one_observation() -> None:
    ids = ["a", "b", "a", "a", "b", "c"]
    accepted = [True, False, False, True, True, False]
    observations = observations_from_rows(ids, accepted)
    assert [(o.prompt_id, o.samples, o.accepted) for o in observations] == [
        ("a", 3, 2),
        ("b", 2, 1),
        ("c", 1, 0),
    ]
    assert all(o.grad_norms is None for o in observations)


def test_only_accepted_finite_norms_are_reported() -> None:
    ids = ["a", "a", "a", "b"]
    accepted = [True, False, True, True]
    norms = [1.5, 9.0, float("nan"), 0.25]
    observations = observations_from_rows(ids, accepted, norms)
    assert [o.grad_norms for o in observations] == [[1.5], [0.25]]


def test_rows_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="one entry per row"):
        observations_from_rows(["a", "b"], [True])


def test_the_integrations_package_imports_no_framework() -> None:
    code = (
        "import sys, trainer_client, trainer_client.integrations, "
        "trainer_client.integrations._batch; "
        "bad = [m for m in ('verl', 'torch', 'omegaconf') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


# --- what the README says the service does without gradient norms -----------------------------


def _no_norms(accepted: list[float], samples: float = 8.0) -> tuple[Any, Any]:
    """Statistics of a run that reported acceptance only (stock verl)."""
    m = len(accepted)
    stats = PromptStatistics(
        samples=np.full(m, samples),
        accepted=np.asarray(accepted, dtype=np.float64),
        grad_norm_sum=np.zeros(m),
        grad_norm_count=np.zeros(m),
        last_step=np.zeros(m, dtype=np.int64),
    )
    totals = RunTotals(samples=samples * m, accepted=float(sum(accepted)))
    return stats, totals


def test_without_norms_gvm_allocates_from_acceptance_alone() -> None:
    stats, totals = _no_norms([4.0, 8.0, 0.0, 1.0, 7.0])
    params = AllocationParams(algo="grpo")
    estimates = estimate(stats, totals, step=1, params=params)
    assert estimates.g_hat.tolist() == [1.0] * 5  # G = 1 everywhere
    plan = allocate(estimates, 40, params)
    # p (1 - p): the prompt at 4 of 8 gets the most samples
    assert int(np.argmax(plan.samples)) == 0
    assert plan.samples[0] > max(plan.samples[1], plan.samples[2])


def test_without_norms_gvm_paper_degenerates_to_the_even_split() -> None:
    stats, totals = _no_norms([4.0, 8.0, 1.0, 7.0])
    params = AllocationParams(strategy="gvm-paper", prior_strength=0)
    plan = allocate(estimate(stats, totals, step=1, params=params), 40, params)
    assert plan.samples.tolist() == [10, 10, 10, 10]


# --- against verl itself ----------------------------------------------------------------------


@pytest.mark.slow
def test_the_adapter_against_verl(service_url: str, tmp_path: Path) -> None:
    run_checks(
        VERL_PYTHON,
        "tests/integrations/verl_adapter_checks.py",
        build="bash .ci/verl-env",
        service_url=service_url,
        tmp_path=tmp_path,
        expected=8,
    )
