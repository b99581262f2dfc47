"""Observations: a trainer's per-prompt statistics of one step, applied once per report_id."""

from __future__ import annotations

from budget_service import metrics
from budget_service.deps import SettingsDep, StoreDep
from budget_service.limits import check_report
from budget_service.routes import RunIdPath, v1_router
from budget_service.schemas import ReportRequest, ReportResult
from budget_service.store import Report

router = v1_router("observations")


@router.post("/{run_id}/observations", response_model=ReportResult)
async def post_observations(
    run_id: RunIdPath, report: ReportRequest, store: StoreDep, settings: SettingsDep
) -> ReportResult:
    """Apply a report atomically; a repeated report_id is answered `duplicate: true`."""
    increments = check_report(report, settings)
    result = await store.apply_report(
        run_id,
        Report(
            report_id=report.report_id,
            step=report.step,
            prompt_ids=[o.prompt_id for o in report.observations],
            increments=increments,
        ),
    )
    if result.duplicate:
        metrics.REPORTS.labels(outcome="duplicate").inc()
    else:
        metrics.REPORTS.labels(outcome="applied").inc()
        metrics.OBSERVATIONS_APPLIED.inc(result.applied)
    return ReportResult(
        report_id=report.report_id, applied=result.applied, duplicate=result.duplicate
    )
