"""The published GVM allocation rule as a plain Python loop: the speed baseline and the
reference our vectorised `gvm-paper` must match integer for integer.

A straightforward re-implementation of what RLHFlow/GVM's em/stage_2_calc_sample_size.py and its
trainer do (weights in a loop over prompts, Python's sequential `sum`, the two filters, round and
fix up, pad to a multiple of the GPU count), written here from the algorithm, not copied. By
default the weights use `math.sqrt` / `math.pow` where the published loop calls np.sqrt /
np.power on scalars: the same results (checked: identical integers), about 10x faster, so the
speed baseline is not handicapped; `numpy_scalars=True` runs the published calls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def loop_allocation(
    accept_rates: Sequence[float],
    grad_norms: Sequence[float],
    budget: int,
    *,
    alpha: float = 1e-3,
    beta: float = 2.0,
    filter_threshold: float = 0.0,
    filter_insufficient: float = 0.0,
    align_to: int = 1,
    numpy_scalars: bool = False,
) -> list[int]:
    """Samples per prompt by the published rule, one prompt at a time.

    numpy_scalars: compute each weight with np.sqrt / np.power as the published loop does
    (same numbers, about 10x slower than `math`)."""
    sqrt, power = (np.sqrt, np.power) if numpy_scalars else (math.sqrt, math.pow)
    weights = []
    for G, p in zip(grad_norms, accept_rates, strict=True):
        if G == 0 or p == 0:
            weights.append(0)
        else:
            weights.append(G / sqrt(p + alpha / power(p, beta - 1.0)))
    total = _left_to_right(weights)
    ratios = [w / total for w in weights]
    if filter_threshold > 0:
        ratios = [
            r if p <= filter_threshold else 0 for r, p in zip(ratios, accept_rates, strict=True)
        ]
    if filter_insufficient > 0:
        ratios = [
            r if p * r * budget >= filter_insufficient else 0
            for r, p in zip(ratios, accept_rates, strict=True)
        ]
    total = _left_to_right(ratios)
    ratios = [r / total for r in ratios]

    scaled = np.array(ratios) * budget
    ints = np.round(scaled).astype(int)
    error = budget - np.sum(ints)
    if error != 0:
        residuals = scaled - ints
        chosen = np.argsort(-residuals if error > 0 else residuals)[: abs(error)]
        ints[chosen] += np.sign(error)
    sizes = ints.tolist()

    if align_to > 1 and sum(sizes) % align_to:
        order = np.argsort(sizes)[::-1]
        i = 0
        while sum(sizes) % align_to:
            sizes[order[i % len(sizes)]] += 1
            i += 1
    return sizes


def _left_to_right(values: list[float]) -> float:
    """What the published `sum(...)` of np.float64 values computes: plain sequential adds
    (Python >= 3.12 compensates `sum` over Python floats, which would change the last bits)."""
    total = 0.0
    for value in values:
        total += value
    return total
