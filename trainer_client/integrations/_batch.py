"""Framework-free pieces of the adapters: a batch's rows -> observations, samples -> copies.

Frameworks such as verl draw a fixed number of samples (``rollout.n``) per prompt row and a fixed
number of rows per batch. GVM's per-prompt counts are realised there the way the paper does for
GRPO: a prompt allocated n_i samples appears as about n_i / rollout.n copies of its row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from trainer_client.models import Observation

__all__ = ["copies_from_counts", "observations_from_rows"]


def copies_from_counts(counts: Sequence[int], slots: int) -> list[int]:
    """Split ``slots`` batch rows over prompts in proportion to their sample counts.

    Largest remainders (Hamilton), in exact integer arithmetic: each prompt gets the floor of its
    quota ``counts[i] * slots / sum(counts)``, and the rows left go to the largest fractional
    parts, earlier prompts first on ties. The result always sums to ``slots``; counts that are
    multiples of ``sum(counts) / slots`` come out exactly. All-zero counts: one row per prompt
    while rows last (the even split).
    """
    if slots < 0 or any(c < 0 for c in counts):
        raise ValueError("slots and counts must be >= 0")
    total = sum(counts)
    if total == 0:
        return [1 if i < slots else 0 for i in range(len(counts))] if counts else []
    base = [c * slots // total for c in counts]
    rest = [c * slots % total for c in counts]
    order = sorted(range(len(counts)), key=lambda i: (-rest[i], i))
    for i in order[: slots - sum(base)]:
        base[i] += 1
    return base


def observations_from_rows(
    prompt_ids: Sequence[str],
    accepted: Sequence[bool],
    grad_norms: Sequence[float] | None = None,
) -> list[Observation]:
    """One observation per distinct prompt (first-appearance order) from per-sample rows.

    ``samples`` counts a prompt's rows (all its copies together), ``accepted`` its accepted rows;
    ``grad_norms``, when given (one per row), keeps the accepted rows' finite, non-negative norms.
    """
    if len(accepted) != len(prompt_ids) or (
        grad_norms is not None and len(grad_norms) != len(prompt_ids)
    ):
        raise ValueError("prompt_ids, accepted and grad_norms need one entry per row")
    rows: dict[str, list[int]] = {}
    for row, prompt_id in enumerate(prompt_ids):
        rows.setdefault(prompt_id, []).append(row)
    observations = []
    for prompt_id, members in rows.items():
        hits = [row for row in members if accepted[row]]
        norms = None
        if grad_norms is not None:
            norms = [float(grad_norms[r]) for r in hits]
            norms = [g for g in norms if math.isfinite(g) and g >= 0]
        observations.append(
            Observation(
                prompt_id=prompt_id, samples=len(members), accepted=len(hits), grad_norms=norms
            )
        )
    return observations
