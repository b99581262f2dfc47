"""``BudgetClient`` and ``AsyncBudgetClient``: typed methods for every v1 route.

Both share ``_BaseClient``, which builds the requests, reads the answers, decides retries and
fallbacks, and owns the spool, without touching the network. The two shells only send, sleep
and (a)wait.

What happens when the service misbehaves:

- connection errors, timeouts, 5xx and 429 are retried with exponential backoff and full jitter
  (``Retry-After`` honoured), the same request each time, so a report keeps its ``report_id`` and
  the service applies it once;
- a 4xx is not retried: it raises a ``RequestError`` carrying the service's error body;
- after the last retry, ``allocate()`` falls back to an even split of the budget by the service's
  ``uniform`` rule (``uniform_split``; a warning is logged, ``Allocation.fallback`` is True,
  ``stats.fallbacks`` counts it), ``report()`` appends the report to the spool
  (``ReportResult.spooled``), and every other method raises ``UnavailableError``;
- after any successful call, and on ``flush()``, spooled reports are sent again, oldest first.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, Self, TypeVar
from urllib.parse import quote

import anyio
import httpx
from pydantic import ValidationError

from ._retry import RETRY_STATUS_CODES, RetryPolicy, RetryState, parse_retry_after
from ._version import __version__
from .errors import (
    AuthenticationError,
    BudgetError,
    ConflictError,
    ConnectionFailedError,
    InvalidRequestError,
    NotFoundError,
    ProtocolError,
    RequestError,
    ServerError,
    UnavailableError,
)
from .models import (
    Allocation,
    AllocationItem,
    Observation,
    PromptStats,
    ReportResult,
    Run,
    RunConfig,
    RunSummary,
)
from .spool import Spool, SpooledReport

__all__ = ["AsyncBudgetClient", "BudgetClient", "ClientStats"]

logger = logging.getLogger("trainer_client")

T = TypeVar("T")

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)  # seconds
# Failures worth another attempt. Everything else from httpx (a bad URL scheme, a proxy refusing
# us) fails the same way every time.
_RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


@dataclass(slots=True)
class ClientStats:
    """Counters of what the client did on its own (for logs and metrics)."""

    retries: int = 0  # attempts repeated after a connection error, 5xx or 429
    fallbacks: int = 0  # allocations split evenly because the service was unreachable
    spooled: int = 0  # reports written to the spool
    replayed: int = 0  # spooled reports delivered later
    rejected: int = 0  # spooled reports the service refused on replay (kept aside, see spool.py)


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    """One logical API call: the request, how to read a 2xx answer, and what to do when the
    service stays unreachable (None: raise)."""

    request: httpx.Request
    parse: Callable[[httpx.Response], T]
    fallback: Callable[[UnavailableError], T] | None = None


def _segment(value: str) -> str:
    """A run or prompt id as one URL path segment."""
    return quote(value, safe="")


def uniform_split(
    budget: int, count: int, config: RunConfig | None = None, drawn: Sequence[int] | None = None
) -> list[int]:
    """The service's ``uniform`` strategy with the bounds this client knows (``config``: the
    run's config as created or read back; unset fields add no bound): ``budget`` rounded down to
    ``align_to``, split as evenly as possible (earlier prompts get the remainder), never more
    than the budget. With ``drawn`` (what each prompt already drew this step) the step's
    *totals* ``drawn_i + x_i`` are made as even as possible, each at least ``drawn_i``, and the
    additional ``x_i`` are returned. A budget the bounds cannot meet (the floors left to fill
    above it: ``count`` x ``min_samples``, at least 2 under GRPO, less what was drawn; the room
    under ``max_samples`` below it) raises the ``InvalidRequestError`` the service would answer.
    The explore floor needs the statistics: it is not applied."""
    if count <= 0:
        return []
    config = config or RunConfig()
    already = [0] * count if drawn is None else list(drawn)
    if len(already) != count or min(already) < 0:
        raise ValueError(f"drawn must be {count} integers >= 0, got {already!r}")
    align = config.align_to or 1
    low = config.min_samples or 0
    if config.algo == "grpo":
        low = max(low, 2)
    total = budget - budget % align
    aligned = f"budget {budget}" + (
        f" (aligned down to {total} for align_to={align})" if total != budget else ""
    )
    drawn_sum = sum(already)
    short = sum(max(low - d, 0) for d in already)
    if short > total:
        grpo = " (GRPO needs 2 per prompt)" if low > (config.min_samples or 0) else ""
        less = f", less the {drawn_sum} already drawn, needs {short}" if drawn_sum else ""
        _infeasible(
            f"{aligned} is below the floor: {count} prompts x min_samples {low} = "
            f"{low * count}{less}{grpo}"
        )
    high = config.max_samples
    if high is not None and (room := sum(max(high - d, 0) for d in already)) < total:
        less = f", less the {drawn_sum} already drawn, leaves {room}" if drawn_sum else ""
        _infeasible(
            f"{aligned} is above the cap: {count} prompts x max_samples {high} = "
            f"{high * count}{less}"
        )
    lower = [max(low, d) for d in already]
    upper = [d + total if high is None else max(high, d) for d in already]
    totals = _even_totals(lower, upper, total + drawn_sum)
    return [t - d for t, d in zip(totals, already, strict=True)]


def _even_totals(lower: list[int], upper: list[int], total: int) -> list[int]:
    """The most even integers within bounds that sum to ``total`` (the service's even split):
    clip(v, l_i, u_i) for the highest level v that fits, then one more for the lowest-index
    prompts sitting at v. Requires sum l <= total <= sum u."""

    def fill(v: int) -> int:
        return sum(min(max(v, lo), hi) for lo, hi in zip(lower, upper, strict=True))

    v_lo, v_hi = min(lower), max(upper)
    if fill(v_hi) <= total:
        v_lo = v_hi
    while v_hi - v_lo > 1:  # fill(v_lo) <= total < fill(v_hi)
        mid = (v_lo + v_hi) // 2
        v_lo, v_hi = (mid, v_hi) if fill(mid) <= total else (v_lo, mid)
    n = [min(max(v_lo, lo), hi) for lo, hi in zip(lower, upper, strict=True)]
    rest = total - sum(n)
    for i, hi in enumerate(upper):
        if rest == 0:
            break
        if n[i] == v_lo and hi > v_lo:
            n[i] += 1
            rest -= 1
    return n


def _infeasible(message: str) -> NoReturn:
    """Raise what the service answers for a budget its bounds cannot meet (422)."""
    detail = {"field": "budget", "rule": "infeasible_budget", "message": message}
    body = {"error": {"code": "infeasible_budget", "message": message, "field": "budget",
                      "details": [detail]}}  # fmt: skip
    raise InvalidRequestError(message, status_code=422, body=body)


class _BaseClient:
    """Request building, answer reading, retry decisions, fallbacks and the spool; no network
    I/O (the shells send and sleep)."""

    _http: httpx.Client | httpx.AsyncClient

    def __init__(
        self,
        *,
        base_url: str,
        token: str | None,
        retry: RetryPolicy | None,
        spool_path: str | os.PathLike[str] | None,
    ) -> None:
        if httpx.URL(base_url).scheme not in ("http", "https"):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self._retry = retry or RetryPolicy()
        self._spool = Spool(spool_path)
        self._configs: dict[str, RunConfig] = {}  # run configs seen, for the fallback's bounds
        self._replay_lock = threading.Lock()
        self.stats = ClientStats()
        self._headers = {"User-Agent": f"gvm-budget-client/{__version__}"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    @property
    def spool(self) -> Spool:
        """The reports waiting to be delivered (``len(client.spool)``)."""
        return self._spool

    # -- requests ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None) -> httpx.Request:
        return self._http.build_request(method, path, json=body)

    def _run_path(self, run_id: str) -> str:
        return f"/v1/runs/{_segment(run_id)}"

    def _put_run(
        self, run_id: str, config: RunConfig | None, fields: Mapping[str, Any]
    ) -> _Call[Run]:
        body = self._config_body(config, fields)
        return _Call(self._request("PUT", self._run_path(run_id), body), self._run_answer)

    def _get_run(self, run_id: str) -> _Call[Run]:
        return _Call(self._request("GET", self._run_path(run_id)), self._run_answer)

    def _patch_run(
        self, run_id: str, config: RunConfig | None, fields: Mapping[str, Any]
    ) -> _Call[Run]:
        body = self._config_body(config, fields)
        return _Call(self._request("PATCH", self._run_path(run_id), body), self._run_answer)

    def _delete_run(self, run_id: str) -> _Call[None]:
        def forget(response: httpx.Response) -> None:
            self._configs.pop(run_id, None)

        return _Call(self._request("DELETE", self._run_path(run_id)), forget)

    def _report(
        self,
        run_id: str,
        step: int,
        observations: Iterable[Observation | Mapping[str, Any]],
        report_id: str | None,
    ) -> _Call[ReportResult]:
        wire = [
            (o if isinstance(o, Observation) else Observation.model_validate(o)).to_wire()
            for o in observations
        ]
        if not wire:
            raise ValueError("a report needs at least one observation")
        report = SpooledReport(run_id, report_id or uuid.uuid4().hex, step, wire)

        def spool(exc: UnavailableError) -> ReportResult:
            self._spool.append(report)
            self.stats.spooled += 1
            logger.warning(
                "service unreachable (%s); report %s for step %d spooled (%d pending)",
                exc,
                report.report_id,
                step,
                len(self._spool),
            )
            return ReportResult(report_id=report.report_id, spooled=True)

        return _Call(self._report_request(report), self._report_answer(report), spool)

    def _report_request(self, report: SpooledReport) -> httpx.Request:
        body = {
            "report_id": report.report_id,
            "step": report.step,
            "observations": report.observations,
        }
        return self._request("POST", f"{self._run_path(report.run_id)}/observations", body)

    def _allocate(
        self,
        run_id: str,
        prompt_ids: Sequence[str],
        budget: int,
        step: int,
        drawn: Sequence[int] | None = None,
        drawn_accepted: Sequence[int] | None = None,
    ) -> _Call[Allocation]:
        prompt_ids = list(prompt_ids)
        body: dict[str, Any] = {"prompt_ids": prompt_ids, "budget": budget, "step": step}
        if drawn is not None:
            body["drawn"] = list(drawn)
        if drawn_accepted is not None:
            body["drawn_accepted"] = list(drawn_accepted)

        def uniform(exc: UnavailableError) -> Allocation:
            config = self._configs.get(run_id)
            counts = uniform_split(budget, len(prompt_ids), config, drawn)
            self.stats.fallbacks += 1
            logger.warning(
                "service unreachable (%s); step %d falls back to a uniform allocation of %d "
                "samples over %d prompts",
                exc,
                step,
                sum(counts),
                len(prompt_ids),
            )
            return Allocation(
                run_id=run_id,
                step=step,
                strategy="uniform",
                budget=budget,
                total=sum(counts),
                items=[
                    AllocationItem(prompt_id=p, samples=n, reason="fallback")
                    for p, n in zip(prompt_ids, counts, strict=True)
                ],
                fallback=True,
            )

        request = self._request("POST", f"{self._run_path(run_id)}/allocations", body)
        return _Call(request, self._model_answer(Allocation), uniform)

    def _latest_allocation(self, run_id: str) -> _Call[Allocation]:
        path = f"{self._run_path(run_id)}/allocations/latest"
        return _Call(self._request("GET", path), self._model_answer(Allocation))

    def _prompt_stats(self, run_id: str, prompt_id: str) -> _Call[PromptStats]:
        path = f"{self._run_path(run_id)}/prompts/{_segment(prompt_id)}"
        return _Call(self._request("GET", path), self._model_answer(PromptStats))

    def _summary(self, run_id: str) -> _Call[RunSummary]:
        path = f"{self._run_path(run_id)}/summary"
        return _Call(self._request("GET", path), self._model_answer(RunSummary))

    @staticmethod
    def _config_body(config: RunConfig | None, fields: Mapping[str, Any]) -> dict[str, Any]:
        merged = (config or RunConfig()).to_wire() | dict(fields)
        return RunConfig.model_validate(merged).to_wire()

    # -- answers ----------------------------------------------------------------------------

    @staticmethod
    def _model_answer(model: type[T]) -> Callable[[httpx.Response], T]:
        def parse(response: httpx.Response) -> T:
            return model.model_validate_json(response.content)  # type: ignore[attr-defined,no-any-return]

        return parse

    def _run_answer(self, response: httpx.Response) -> Run:
        run = Run.model_validate_json(response.content)
        self._configs[run.run_id] = run.config
        return run

    @staticmethod
    def _report_answer(report: SpooledReport) -> Callable[[httpx.Response], ReportResult]:
        def parse(response: httpx.Response) -> ReportResult:
            result = ReportResult.model_validate_json(response.content)
            return result.model_copy(update={"report_id": report.report_id})

        return parse

    def _read(self, call: _Call[T], response: httpx.Response) -> T:
        """The value of a final answer, or the matching error."""
        if response.is_success:
            try:
                return call.parse(response)
            except (ValidationError, ValueError) as exc:
                raise ProtocolError(
                    f"{_describe(call.request)}: unexpected answer ({exc})"
                ) from exc
        raise _status_error(call.request, response)

    def _unavailable(self, call: _Call[T], exc: UnavailableError) -> T:
        if call.fallback is None:
            raise exc
        return call.fallback(exc)

    # -- retries (pure decisions; the shells sleep) -----------------------------------------

    def _new_retry(self) -> RetryState:
        return RetryState(self._retry)

    def _after_error(
        self, state: RetryState, request: httpx.Request, exc: httpx.HTTPError
    ) -> float:
        """Seconds to wait after a transport error, or raise when giving up."""
        delay = state.next_delay() if isinstance(exc, _RETRYABLE_ERRORS) else None
        if delay is None:
            raise ConnectionFailedError(
                f"{_describe(request)}: {type(exc).__name__}: {exc or 'no answer'} "
                f"(after {state.attempt} attempt(s))",
                attempts=state.attempt,
            ) from exc
        self.stats.retries += 1
        logger.debug("%s: %s; retrying in %.2fs", _describe(request), type(exc).__name__, delay)
        return delay

    def _after_response(
        self, state: RetryState, request: httpx.Request, response: httpx.Response
    ) -> float | None:
        """Seconds to wait before retrying this answer, None when it is final; raise when
        retrying is pointless."""
        if response.status_code not in RETRY_STATUS_CODES:
            return None
        delay = state.next_delay(parse_retry_after(response.headers.get("Retry-After")))
        if delay is None:
            raise ServerError(
                f"{_describe(request)}: HTTP {response.status_code} after {state.attempt} "
                f"attempt(s): {_error_message(response)}",
                attempts=state.attempt,
                status_code=response.status_code,
            )
        self.stats.retries += 1
        logger.debug(
            "%s: HTTP %d; retrying in %.2fs", _describe(request), response.status_code, delay
        )
        return delay

    # -- the spool --------------------------------------------------------------------------

    def _replay_outcome(self, report: SpooledReport, response: httpx.Response) -> None:
        """Record the service's final answer to a spooled report (a 5xx raises: try later)."""
        call = _Call(self._report_request(report), self._report_answer(report))
        try:
            result = self._read(call, response)
        except RequestError as exc:
            logger.error("spooled report %s refused: %s", report.report_id, exc)
            self._spool.mark(report.report_id, "rejected")
            self.stats.rejected += 1
            return
        self._spool.mark(report.report_id, "duplicate" if result.duplicate else "applied")
        self.stats.replayed += 1


def _describe(request: httpx.Request) -> str:
    return f"{request.method} {request.url}"


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return str(body)[:500]


_STATUS_ERRORS: dict[int, type[RequestError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    422: InvalidRequestError,
}


def _status_error(request: httpx.Request, response: httpx.Response) -> BudgetError:
    """The error for a non-2xx final answer (httpx's own classes never escape)."""
    status = response.status_code
    message = f"{_describe(request)}: HTTP {status}: {_error_message(response)}"
    if status >= 500:
        return ServerError(message, attempts=1, status_code=status)
    if status < 400:
        return ProtocolError(message)
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return _STATUS_ERRORS.get(status, RequestError)(message, status_code=status, body=body)


class BudgetClient(_BaseClient):
    """Talks to a GVM Budget service. Thread-safe; use as a context manager or call ``close()``.

    ``spool_path``: where undeliverable reports wait (a file survives a restart of the trainer;
    None keeps them in memory only). ``transport``: any httpx transport (tests).
    """

    _http: httpx.Client

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        token: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        spool_path: str | os.PathLike[str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url=base_url, token=token, retry=retry, spool_path=spool_path)
        self._http = httpx.Client(
            base_url=base_url, headers=self._headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close connections and the spool file (pending reports stay in it; see ``flush``)."""
        self._http.close()
        self._spool.close()

    # -- the routes -------------------------------------------------------------------------

    def put_run(self, run_id: str, config: RunConfig | None = None, **fields: Any) -> Run:
        """Create a run or replace its config (statistics are kept)."""
        return self._execute(self._put_run(run_id, config, fields))

    def get_run(self, run_id: str) -> Run:
        return self._execute(self._get_run(run_id))

    def patch_run(self, run_id: str, config: RunConfig | None = None, **fields: Any) -> Run:
        """Change only the given fields of a run's config."""
        return self._execute(self._patch_run(run_id, config, fields))

    def delete_run(self, run_id: str) -> None:
        """Delete a run and all its statistics."""
        self._execute(self._delete_run(run_id))

    def report(
        self,
        run_id: str,
        step: int,
        observations: Iterable[Observation | Mapping[str, Any]],
        *,
        report_id: str | None = None,
    ) -> ReportResult:
        """Post observations. Applied once however often it is retried or replayed; spooled
        (``spooled=True``) if the service stays unreachable."""
        return self._execute(self._report(run_id, step, observations, report_id))

    def allocate(
        self,
        run_id: str,
        prompt_ids: Sequence[str],
        budget: int,
        step: int,
        *,
        drawn: Sequence[int] | None = None,
        drawn_accepted: Sequence[int] | None = None,
    ) -> Allocation:
        """Samples per prompt for this batch; an even split (``fallback=True``) if the service
        stays unreachable. ``drawn`` (and ``drawn_accepted``): what each prompt already drew
        (and had accepted) this step; the answer is then the additional samples (a top-up)."""
        call = self._allocate(run_id, prompt_ids, budget, step, drawn, drawn_accepted)
        return self._execute(call)

    def latest_allocation(self, run_id: str) -> Allocation:
        return self._execute(self._latest_allocation(run_id))

    def prompt_stats(self, run_id: str, prompt_id: str) -> PromptStats:
        return self._execute(self._prompt_stats(run_id, prompt_id))

    def summary(self, run_id: str) -> RunSummary:
        return self._execute(self._summary(run_id))

    def health(self) -> bool:
        """Is the process up (``/healthz``)? One attempt, never raises."""
        return self._probe("/healthz")

    def ready(self) -> bool:
        """Can it serve, Redis included (``/readyz``)? One attempt, never raises."""
        return self._probe("/readyz")

    def flush(self) -> int:
        """Send spooled reports now; the number still pending (0: everything was delivered)."""
        self._replay()
        return len(self._spool)

    # -- the send chain ---------------------------------------------------------------------

    def _probe(self, path: str) -> bool:
        try:
            return self._http.send(self._request("GET", path)).status_code == 200
        except httpx.HTTPError:
            return False

    def _execute(self, call: _Call[T]) -> T:
        try:
            response = self._send(call.request)
        except UnavailableError as exc:
            return self._unavailable(call, exc)
        result = self._read(call, response)
        if self._spool:
            self._replay()
        return result

    def _send(self, request: httpx.Request) -> httpx.Response:
        state = self._new_retry()
        while True:
            try:
                response = self._http.send(request)
            except httpx.HTTPError as exc:
                delay = self._after_error(state, request, exc)
            else:
                maybe = self._after_response(state, request, response)
                if maybe is None:
                    return response
                delay = maybe
            time.sleep(delay)

    def _replay(self) -> None:
        if not self._replay_lock.acquire(blocking=False):
            return  # another thread is replaying
        try:
            while (report := self._spool.oldest()) is not None:
                try:
                    response = self._send(self._report_request(report))
                    self._replay_outcome(report, response)
                except UnavailableError as exc:
                    logger.info("spool replay paused (%s); %d pending", exc, len(self._spool))
                    return
        finally:
            self._replay_lock.release()


class AsyncBudgetClient(_BaseClient):
    """The ``async`` twin of ``BudgetClient``: same arguments, same methods, awaited; ``aclose``.

    Spool writes (only while the service is unreachable) are small local file appends, done
    inline.
    """

    _http: httpx.AsyncClient

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        token: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        spool_path: str | os.PathLike[str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url=base_url, token=token, retry=retry, spool_path=spool_path)
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=self._headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close connections and the spool file (pending reports stay in it; see ``flush``)."""
        await self._http.aclose()
        self._spool.close()

    # -- the routes -------------------------------------------------------------------------

    async def put_run(self, run_id: str, config: RunConfig | None = None, **fields: Any) -> Run:
        """Create a run or replace its config (statistics are kept)."""
        return await self._execute(self._put_run(run_id, config, fields))

    async def get_run(self, run_id: str) -> Run:
        return await self._execute(self._get_run(run_id))

    async def patch_run(self, run_id: str, config: RunConfig | None = None, **fields: Any) -> Run:
        """Change only the given fields of a run's config."""
        return await self._execute(self._patch_run(run_id, config, fields))

    async def delete_run(self, run_id: str) -> None:
        """Delete a run and all its statistics."""
        await self._execute(self._delete_run(run_id))

    async def report(
        self,
        run_id: str,
        step: int,
        observations: Iterable[Observation | Mapping[str, Any]],
        *,
        report_id: str | None = None,
    ) -> ReportResult:
        """Post observations. Applied once however often it is retried or replayed; spooled
        (``spooled=True``) if the service stays unreachable."""
        return await self._execute(self._report(run_id, step, observations, report_id))

    async def allocate(
        self,
        run_id: str,
        prompt_ids: Sequence[str],
        budget: int,
        step: int,
        *,
        drawn: Sequence[int] | None = None,
        drawn_accepted: Sequence[int] | None = None,
    ) -> Allocation:
        """Samples per prompt for this batch; an even split (``fallback=True``) if the service
        stays unreachable. ``drawn`` (and ``drawn_accepted``): what each prompt already drew
        (and had accepted) this step; the answer is then the additional samples (a top-up)."""
        call = self._allocate(run_id, prompt_ids, budget, step, drawn, drawn_accepted)
        return await self._execute(call)

    async def latest_allocation(self, run_id: str) -> Allocation:
        return await self._execute(self._latest_allocation(run_id))

    async def prompt_stats(self, run_id: str, prompt_id: str) -> PromptStats:
        return await self._execute(self._prompt_stats(run_id, prompt_id))

    async def summary(self, run_id: str) -> RunSummary:
        return await self._execute(self._summary(run_id))

    async def health(self) -> bool:
        """Is the process up (``/healthz``)? One attempt, never raises."""
        return await self._probe("/healthz")

    async def ready(self) -> bool:
        """Can it serve, Redis included (``/readyz``)? One attempt, never raises."""
        return await self._probe("/readyz")

    async def flush(self) -> int:
        """Send spooled reports now; the number still pending (0: everything was delivered)."""
        await self._replay()
        return len(self._spool)

    # -- the send chain ---------------------------------------------------------------------

    async def _probe(self, path: str) -> bool:
        try:
            return (await self._http.send(self._request("GET", path))).status_code == 200
        except httpx.HTTPError:
            return False

    async def _execute(self, call: _Call[T]) -> T:
        try:
            response = await self._send(call.request)
        except UnavailableError as exc:
            return self._unavailable(call, exc)
        result = self._read(call, response)
        if self._spool:
            await self._replay()
        return result

    async def _send(self, request: httpx.Request) -> httpx.Response:
        state = self._new_retry()
        while True:
            try:
                response = await self._http.send(request)
            except httpx.HTTPError as exc:
                delay = self._after_error(state, request, exc)
            else:
                maybe = self._after_response(state, request, response)
                if maybe is None:
                    return response
                delay = maybe
            await anyio.sleep(delay)

    async def _replay(self) -> None:
        if not self._replay_lock.acquire(blocking=False):
            return  # another task is replaying
        try:
            while (report := self._spool.oldest()) is not None:
                try:
                    response = await self._send(self._report_request(report))
                    self._replay_outcome(report, response)
                except UnavailableError as exc:
                    logger.info("spool replay paused (%s); %d pending", exc, len(self._spool))
                    return
        finally:
            self._replay_lock.release()
