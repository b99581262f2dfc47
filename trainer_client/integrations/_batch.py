"""Framework-free pieces of the adapters: prompt ids, a batch's rows -> observations, samples ->
copies or per-row counts.

verl before 0.8 draws a fixed number of samples (``rollout.n``) per prompt row and a fixed number
of rows per batch: a prompt allocated n_i samples appears there as about n_i / rollout.n copies of
its row (``copies_from_counts``). verl 0.8+ takes a count per row (``row_counts``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence, Sized

from trainer_client.models import Observation

__all__ = [
    "copies_from_counts",
    "dataset_prompt_ids",
    "observations_from_rows",
    "prompt_id",
    "row_counts",
]


def prompt_id(data_source: object, index: object) -> str:
    """The service's id of a verl dataset row: ``"{data_source}:{extra_info.index}"``, the two
    fields verl carries from a row into every sample drawn from it."""
    return f"{data_source}:{index}"


def dataset_prompt_ids(dataset: Sized) -> list[str]:
    """The id of every row of a verl dataset, checked unique (columns of RLHFDataset's dataframe
    when it has one, else ``dataset[i]`` row by row)."""
    frame = getattr(dataset, "dataframe", None)
    if frame is not None and "extra_info" in getattr(frame, "column_names", ()):
        count = len(frame)
        sources = frame["data_source"] if "data_source" in frame.column_names else [""] * count
        extras = frame["extra_info"]
        ids = [
            prompt_id(s, (e or {}).get("index", 0)) for s, e in zip(sources, extras, strict=True)
        ]
    else:
        rows = (dataset[i] for i in range(len(dataset)))  # type: ignore[index]
        ids = [prompt_id(row.get("data_source", ""), row.get("index", 0)) for row in rows]
    first: dict[str, int] = {}
    for row, pid in enumerate(ids):
        if pid in first:
            raise ValueError(
                f"dataset rows {first[pid]} and {row} share the prompt id {pid!r} "
                "(data_source and extra_info.index): give every row a unique extra_info.index"
            )
        first[pid] = row
    return ids


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


def row_counts(prompt_ids: Sequence[str], counts: Sequence[int], floor: int = 2) -> list[int]:
    """Samples for each row of a batch from one count per distinct prompt (first-appearance
    order, as ``dict.fromkeys(prompt_ids)`` lists them).

    A prompt on k rows (a batch that wraps around an epoch) has its count split over them, each
    share at least ``floor`` (a GRPO group needs two samples for a baseline): as many rows as the
    count allows get an even share, earlier rows the remainder, the others none.
    """
    if floor < 1:
        raise ValueError("floor must be >= 1")
    distinct = list(dict.fromkeys(prompt_ids))
    if len(counts) != len(distinct):
        raise ValueError(f"{len(counts)} counts for {len(distinct)} distinct prompts")
    rows: dict[str, list[int]] = {p: [] for p in distinct}
    for row, pid in enumerate(prompt_ids):
        rows[pid].append(row)
    out = [0] * len(prompt_ids)
    for pid, count in zip(distinct, counts, strict=True):
        members = rows[pid][: max(1, count // floor)]
        base, extra = divmod(count, len(members))
        for j, row in enumerate(members):
            out[row] = base + (j < extra)
    return out
