"""Checks that need the settings or span a report's fields, run after the schemas parse.

The schemas stay static (their OpenAPI schema does not depend on settings); what a deployment
configures (ids per request, id lengths) and the rules across an observation's fields are
checked here, each failure an `InvalidRequestError` naming the field and the rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from budget_service.errors import InvalidRequestError
from budget_service.schemas import AllocationRequest, Observation, ReportRequest
from budget_service.settings import Settings

_MAX_DETAILS = 20  # field errors listed per answer


def _limit_error(field: str, rule: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"{field}: {message}", field=field, rule=rule)


# (rows that break the rule, field, rule name, message for row i)
Rule = tuple[NDArray[np.bool_], str, str, Callable[[int], str]]


def check_report(report: ReportRequest, settings: Settings) -> NDArray[np.float64]:
    """The rules that span fields, and settings-driven limits, checked for every observation
    at once (vectorised: 1,024 observations in well under a millisecond). Returns the
    increments (n, 6): samples, accepted, grad_norm_sum, grad_norm_count and the rejected
    samples' norm sum and count."""
    observations = report.observations
    n = len(observations)
    if n > settings.max_report_observations:
        raise _limit_error(
            "observations",
            "max_items",
            f"has {n} items, more than "
            f"GVM_MAX_REPORT_OBSERVATIONS ({settings.max_report_observations})",
        )

    def column(values: Iterable[float], dtype: type = np.float64) -> NDArray[Any]:
        return np.fromiter(values, dtype, n)

    samples = column(o.samples for o in observations)
    accepted = column(o.accepted for o in observations)
    id_length = column((len(o.prompt_id) for o in observations), np.int64)
    limit = settings.max_prompt_id_length
    rules: list[Rule] = [
        (id_length > limit, "prompt_id", "max_length",
         lambda i: f"is {id_length[i]} chars, longer than GVM_MAX_PROMPT_ID_LENGTH ({limit})"),
        (accepted > samples, "accepted", "accepted_le_samples",
         lambda i: f"must be <= samples ({samples[i]:.0f})"),
    ]  # fmt: skip
    norm_sum, norm_count, accepted_rules = _norm_columns(
        observations, "", accepted, "accepted", "accepted"
    )
    rejected = np.maximum(samples - accepted, 0)
    rejected_sum, rejected_count, rejected_rules = _norm_columns(
        observations, "rejected_", rejected, "samples - accepted", "rejected"
    )
    rules += accepted_rules + rejected_rules
    details = [
        {"field": f"observations[{i}].{name}", "rule": rule, "message": message(i)}
        for mask, name, rule, message in rules
        if mask.any()
        for i in np.flatnonzero(mask)[:_MAX_DETAILS].tolist()
    ]
    if details:
        details.sort(key=lambda d: (int(d["field"].split("[")[1].split("]")[0]), d["field"]))
        details = details[:_MAX_DETAILS]
        first = details[0]
        message = f"{first['field']}: {first['message']}"
        if len(details) > 1:
            message += f" (and {len(details) - 1} more)"
        raise InvalidRequestError(
            message, field=first["field"], rule=first["rule"], details=details
        )
    return np.column_stack([samples, accepted, norm_sum, norm_count, rejected_sum, rejected_count])


def _norm_columns(
    observations: Sequence[Observation],
    prefix: str,
    bound: NDArray[np.float64],
    bound_text: str,
    kind: str,
) -> tuple[NDArray[np.float64], NDArray[np.float64], list[Rule]]:
    """Sum and count of one kind of norms (`prefix` "" for the accepted samples', "rejected_"
    for the rejected samples'), from either the list or the pair, and the rules they obey: at
    most `bound` norms per observation."""
    n = len(observations)
    sums = [getattr(o, f"{prefix}grad_norm_sum") for o in observations]
    counts = [getattr(o, f"{prefix}grad_norm_count") for o in observations]
    lists = [getattr(o, f"{prefix}grad_norms") for o in observations]
    has_sum = np.fromiter((v is not None for v in sums), bool, n)
    has_count = np.fromiter((v is not None for v in counts), bool, n)
    has_norms = np.fromiter((v is not None for v in lists), bool, n)
    norm_sum = np.fromiter((v or 0.0 for v in sums), np.float64, n)
    norm_count = np.fromiter((v or 0 for v in counts), np.float64, n)
    for i in np.flatnonzero(has_norms).tolist():
        norm_sum[i], norm_count[i] = math.fsum(lists[i]), len(lists[i])
    names = (f"{prefix}grad_norm_sum", f"{prefix}grad_norm_count", f"{prefix}grad_norms")
    rules: list[Rule] = [
        (has_sum != has_count, names[1], "grad_norm_pair",
         lambda i: f"{names[0]} and {names[1]} must be given together"),
        (has_count & ~has_norms & (norm_count > bound), names[1], f"count_le_{kind}",
         lambda i: f"must be <= {bound_text} ({bound[i]:.0f})"),
        (has_count & has_sum & (norm_count == 0) & (norm_sum > 0), names[1],
         "zero_count_sum", lambda i: f"is 0 but {names[0]} is not"),
        (has_norms & (has_sum | has_count), names[2], "norms_or_sum",
         lambda i: f"give {names[2]} or {names[0]} with {names[1]}, not both"),
        (has_norms & (norm_count > bound), names[2], f"norms_le_{kind}",
         lambda i: f"has {norm_count[i]:.0f} entries, more than {bound_text} ({bound[i]:.0f})"),
    ]  # fmt: skip
    return norm_sum, norm_count, rules


def check_allocation_limits(request: AllocationRequest, settings: Settings) -> None:
    ids = request.prompt_ids
    if len(ids) > settings.max_allocation_prompts:
        raise _limit_error(
            "prompt_ids",
            "max_items",
            f"has {len(ids)} items, more than "
            f"GVM_MAX_ALLOCATION_PROMPTS ({settings.max_allocation_prompts})",
        )
    limit = settings.max_prompt_id_length
    first_index: dict[str, int] = {}
    for j, prompt_id in enumerate(ids):
        if len(prompt_id) > limit:
            raise _limit_error(
                f"prompt_ids[{j}]",
                "max_length",
                f"is {len(prompt_id)} chars, longer than GVM_MAX_PROMPT_ID_LENGTH ({limit})",
            )
        if prompt_id in first_index:
            raise _limit_error(
                f"prompt_ids[{j}]",
                "unique",
                f"repeats prompt_ids[{first_index[prompt_id]}] ({prompt_id!r}); "
                "ids must be distinct",
            )
        first_index[prompt_id] = j
    _check_drawn(request)


def _check_drawn(request: AllocationRequest) -> None:
    """`drawn` and `drawn_accepted`: one entry per prompt id, accepted <= drawn, accepted only
    with drawn (the schema already checks each entry is an integer in range)."""
    m = len(request.prompt_ids)
    drawn, accepted = request.drawn, request.drawn_accepted
    if drawn is None:
        if accepted is not None:
            raise _limit_error("drawn_accepted", "needs_drawn", "is given without drawn")
        return
    for name, values in (("drawn", drawn), ("drawn_accepted", accepted)):
        if values is not None and len(values) != m:
            i = min(len(values), m)  # the first entry that is missing or extra
            raise _limit_error(
                f"{name}[{i}]",
                "same_length",
                f"{name} has {len(values)} items, prompt_ids has {m}: "
                + (f"{name}[{i}] is missing" if len(values) < m else f"{name}[{i}] is extra"),
            )
    if accepted is not None:
        over = np.flatnonzero(np.asarray(accepted) > np.asarray(drawn))
        if over.size:
            i = int(over[0])
            raise _limit_error(
                f"drawn_accepted[{i}]",
                "accepted_le_drawn",
                f"is {accepted[i]}, more than drawn[{i}] ({drawn[i]})",
            )
