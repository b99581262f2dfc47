"""The exact maximiser of a separable sum of concave per-prompt values, sum_i V_i(n_i), under
per-prompt bounds and an exact total: take the `need` largest marginal gains.

When every prompt's gains V_i(n + 1) - V_i(n) are non-increasing in n, the best `need` units are
the `need` largest gains over all prompts, and they form a prefix of each prompt's sequence (ties
go to the smaller count n, then the lower index: deterministic, and a prefix). Gains come from a
callback, a block of columns at a time; a prompt whose block is used up is extended until the cut
stops moving, so the answer is exact however the blocks are sized.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from budget_service.engine.params import F64, I64, AllocationError
from budget_service.engine.solver import kth_largest

__all__ = ["GainBlock", "take_largest"]

# Gains held at once, at most (8 bytes each, three arrays): a budget far past any batch's needs
# (the API takes up to 1e12) must be a 422, not a memory blow-up.
MAX_UNITS = 1 << 25

# gains(rows, start, width) -> gains[r, j] of unit `start + j` (0-based past the prompt's floor)
# of prompt rows[r]; entries past a prompt's room are ignored.
GainBlock = Callable[[NDArray[np.intp], I64, int], F64]


def take_largest(gains: GainBlock, floor: I64, room: I64, need: int) -> I64:
    """Units per prompt past `floor` (at most `room`), `need` in all, maximising the sum of
    their gains; requires 0 <= need <= sum room and gains non-increasing along each row."""
    m = room.size
    taken = np.zeros(m, np.int64)
    if need <= 0:
        return taken
    explored = np.zeros(m, np.int64)  # units whose gain is known, per prompt
    owners: list[NDArray[np.intp]] = []
    units: list[I64] = []
    values: list[F64] = []
    rows = np.flatnonzero(room > 0)
    width = max(4, 2 * math.ceil(need / max(rows.size, 1)) + 2)
    while rows.size:
        if int(explored.sum()) + rows.size * width > MAX_UNITS:
            raise AllocationError(
                f"budget: {need} samples past the floors is more than this strategy can weigh "
                f"unit by unit (at most {MAX_UNITS} gains); set max_samples or use gvm",
                field="budget",
            )
        start = explored[rows]
        block = gains(rows, start, width)
        j = np.arange(width)
        valid = j[None, :] < (room[rows] - start)[:, None]
        r, c = np.nonzero(valid)
        owners.append(rows[r])
        units.append(start[r] + c)
        values.append(block[r, c])
        explored[rows] = np.minimum(start + width, room[rows])
        taken = _select(
            np.concatenate(owners), np.concatenate(units), np.concatenate(values), floor, need, m
        )
        # a prompt with every known unit taken and room left may deserve more: extend it
        rows = np.flatnonzero((taken == explored) & (explored < room))
        width *= 2
    return taken


def _select(owner: NDArray[np.intp], unit: I64, value: F64, floor: I64, need: int, m: int) -> I64:
    """Per prompt, how many of the `need` best units (gain desc, count asc, index asc) it owns."""
    if need >= value.size:
        return np.bincount(owner, minlength=m).astype(np.int64)
    cut = kth_largest(value, need)
    above = np.flatnonzero(value > cut)
    tied = np.flatnonzero(value == cut)
    order = np.lexsort((owner[tied], floor[owner[tied]] + unit[tied]))
    pick = np.concatenate((above, tied[order[: need - above.size]]))
    return np.bincount(owner[pick], minlength=m).astype(np.int64)
