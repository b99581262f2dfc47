"""Case tables that the service and the client must agree on (run against both by
tests/client/test_shared_rules.py).

BAD_OBSERVATIONS: (id, observation, field, rule). The service answers 422 naming
`observations[0].<field>` and `rule`; the client's `Observation` raises a validation error on the
same field with the same rule, so a report the client spools is one the service will take.
Left out on purpose: JSON types (the client sends what its models typed, "8" goes out as 8) and
the limits a deployment sets (GVM_MAX_PROMPT_ID_LENGTH, GVM_MAX_REPORT_OBSERVATIONS), which the
client cannot know.

UNIFORM_SPLITS: (id, run config, budget, prompts, feasible, drawn). The service's `uniform`
strategy and the client's fallback `uniform_split` (given the config the service answers for the
run, and `drawn` for a top-up) give the same integers, or both refuse the budget (422
infeasible_budget).
"""

from __future__ import annotations

import math
from typing import Any

OK_OBSERVATION: dict[str, Any] = {
    "prompt_id": "p", "samples": 8, "accepted": 2, "grad_norms": [1.0, 2.0],
}  # fmt: skip


def observation(**changes: Any) -> dict[str, Any]:
    """OK_OBSERVATION with `changes`; a value of None removes the field."""
    merged = {**OK_OBSERVATION, **changes}
    return {key: value for key, value in merged.items() if value is not None}


BAD_OBSERVATIONS: list[tuple[str, dict[str, Any], str, str]] = [
    ("zero samples", observation(samples=0, accepted=0, grad_norms=None),
     "samples", "greater_than_equal"),
    ("negative samples", observation(samples=-1), "samples", "greater_than_equal"),
    ("samples above 10^9", observation(samples=10**9 + 1), "samples", "less_than_equal"),
    ("missing samples", observation(samples=None), "samples", "missing"),
    ("negative accepted", observation(accepted=-1, grad_norms=None),
     "accepted", "greater_than_equal"),
    ("accepted > samples", observation(accepted=9), "accepted", "accepted_le_samples"),
    ("empty prompt id", observation(prompt_id=""), "prompt_id", "string_too_short"),
    ("unknown field", observation(weight=2.0), "weight", "extra_forbidden"),
    ("NaN grad norm", observation(grad_norms=[1.0, math.nan]), "grad_norms[1]", "finite_number"),
    ("infinite grad norm", observation(grad_norms=[math.inf]), "grad_norms[0]", "finite_number"),
    ("negative grad norm", observation(grad_norms=[-1.0]),
     "grad_norms[0]", "greater_than_equal"),
    ("grad norm above 1e15", observation(grad_norms=[2e15]), "grad_norms[0]", "less_than_equal"),
    ("more norms than accepted", observation(grad_norms=[1.0, 1.0, 1.0]),
     "grad_norms", "norms_le_accepted"),
    ("norms and sum", observation(grad_norm_sum=3.0, grad_norm_count=2),
     "grad_norms", "norms_or_sum"),
    ("sum without count", observation(grad_norms=None, grad_norm_sum=2.0),
     "grad_norm_count", "grad_norm_pair"),
    ("count without sum", observation(grad_norms=None, grad_norm_count=2),
     "grad_norm_count", "grad_norm_pair"),
    ("count > accepted", observation(grad_norms=None, grad_norm_sum=2.0, grad_norm_count=3),
     "grad_norm_count", "count_le_accepted"),
    ("zero count, nonzero sum", observation(grad_norms=None, grad_norm_sum=2.0,
     grad_norm_count=0), "grad_norm_count", "zero_count_sum"),
    ("negative count", observation(grad_norms=None, grad_norm_sum=0.0, grad_norm_count=-1),
     "grad_norm_count", "greater_than_equal"),
    ("NaN sum", observation(grad_norms=None, grad_norm_sum=math.nan, grad_norm_count=1),
     "grad_norm_sum", "finite_number"),
    ("negative sum", observation(grad_norms=None, grad_norm_sum=-1.0, grad_norm_count=1),
     "grad_norm_sum", "greater_than_equal"),
    ("more rejected norms than rejected samples", observation(rejected_grad_norms=[1.0] * 7),
     "rejected_grad_norms", "norms_le_rejected"),
    ("rejected norms when all were accepted",
     observation(accepted=8, grad_norms=None, rejected_grad_norms=[1.0]),
     "rejected_grad_norms", "norms_le_rejected"),
    ("rejected count > samples - accepted",
     observation(rejected_grad_norm_sum=2.0, rejected_grad_norm_count=7),
     "rejected_grad_norm_count", "count_le_rejected"),
    ("rejected sum without count", observation(rejected_grad_norm_sum=2.0),
     "rejected_grad_norm_count", "grad_norm_pair"),
    ("rejected norms and sum", observation(rejected_grad_norms=[1.0],
     rejected_grad_norm_sum=1.0, rejected_grad_norm_count=1),
     "rejected_grad_norms", "norms_or_sum"),
    ("rejected zero count, nonzero sum",
     observation(rejected_grad_norm_sum=1.0, rejected_grad_norm_count=0),
     "rejected_grad_norm_count", "zero_count_sum"),
    ("NaN rejected norm", observation(rejected_grad_norms=[1.0, math.nan]),
     "rejected_grad_norms[1]", "finite_number"),
    ("rejected norm above 1e15", observation(rejected_grad_norms=[1e16]),
     "rejected_grad_norms[0]", "less_than_equal"),
]  # fmt: skip

UNIFORM_SPLITS: list[tuple[str, dict[str, Any], int, int, bool, list[int] | None]] = [
    ("defaults", {}, 10, 4, True, None),
    ("defaults, even", {}, 8, 4, True, None),
    ("defaults, many prompts", {}, 1000, 7, True, None),
    ("one prompt", {}, 5, 1, True, None),
    ("below the default floor of 1", {}, 3, 4, False, None),
    ("no floor", {"min_samples": 0}, 3, 4, True, None),
    ("zero budget, no floor", {"min_samples": 0}, 0, 3, True, None),
    ("floor met", {"min_samples": 2}, 10, 4, True, None),
    ("floor exactly", {"min_samples": 2}, 8, 4, True, None),
    ("below the floor", {"min_samples": 2}, 6, 4, False, None),
    ("cap met exactly", {"max_samples": 6}, 12, 2, True, None),
    ("above the cap", {"max_samples": 6}, 20, 2, False, None),
    ("aligned down", {"align_to": 4}, 10, 3, True, None),
    ("aligned down to the cap", {"max_samples": 3, "align_to": 2}, 7, 2, True, None),
    ("aligned down below the floor", {"min_samples": 2, "align_to": 4}, 11, 5, False, None),
    ("bounds and alignment", {"min_samples": 3, "max_samples": 150, "align_to": 8},
     1003, 7, True, None),
    ("GRPO's floor of 2", {"algo": "grpo", "min_samples": 0}, 9, 4, True, None),
    ("below GRPO's floor of 2", {"algo": "grpo", "min_samples": 1}, 7, 4, False, None),
    ("GRPO aligned", {"algo": "grpo", "align_to": 4}, 9, 4, True, None),
    ("GRPO with a higher floor", {"algo": "grpo", "min_samples": 3}, 11, 4, False, None),
    ("explore floor on new prompts", {"explore_samples": 5}, 12, 4, True, None),
    # top-ups: the most even totals drawn + x, each at least what was drawn
    ("top-up to even totals", {}, 8, 4, True, [4, 0, 2, 2]),
    ("top-up, a prompt above the even level", {}, 6, 3, True, [10, 0, 1]),
    ("top-up aligned down", {"align_to": 4}, 7, 3, True, [1, 2, 3]),
    ("top-up under a cap", {"max_samples": 5}, 6, 3, True, [5, 1, 0]),
    ("top-up, a prompt over its cap", {"max_samples": 3}, 4, 3, True, [5, 1, 0]),
    ("top-up above the room under the cap", {"max_samples": 4}, 6, 3, False, [4, 3, 0]),
    ("top-up fills the floor first", {"min_samples": 3}, 5, 3, True, [0, 4, 2]),
    ("top-up below GRPO's floor", {"algo": "grpo"}, 2, 3, False, [1, 0, 2]),
    ("top-up of nothing", {}, 0, 2, True, [3, 3]),
]  # fmt: skip
