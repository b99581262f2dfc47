"""Schema fuzzing: schemathesis against the live service's own /openapi.json.

Every operation is fuzzed (schemathesis' examples, coverage and fuzzing phases, positive and
negative data), then a stateful phase follows the links between operations (create a run ->
report -> allocate -> read back). The service runs with a bearer token, so the security scheme in
the schema is exercised too (requests without the token must get 401). What must hold for every
response:

- no 5xx, ever;
- the status code is documented for the operation, the body matches its documented schema, the
  content type and headers too (schemathesis' built-in checks);
- every 4xx is the one error shape, with the request id of the X-Request-ID header;
- a schema-valid request is accepted, unless it breaks a rule JSON Schema cannot express (listed
  in `CROSS_FIELD_RULES`, named by the answer's `details[].rule`).

The run is seeded (reproducible in CI) and counted: at least `MIN_REQUESTS` requests must have
been answered, or the test fails (a fuzzer that silently generates nothing proves nothing).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import hypothesis
import pytest
import requests
import schemathesis
from redis import Redis
from schemathesis import Case
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import Failure
from schemathesis.core.transport import Response

from budget_service.embedded import LocalRedis
from budget_service.openapi import COMMITTED
from budget_service.schemas import ErrorResponse

pytestmark = [
    pytest.mark.slow,
    # schemathesis warns about its own internals under some Hypothesis versions.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning"),
]

TOKEN = "fuzz-admin-token-7f3a"
SEED = 20260101
EXAMPLES_PER_OPERATION = 120  # fuzzing phase; the coverage and examples phases add their own
STATEFUL_SCENARIOS = 60
MIN_REQUESTS = 2000

# Rules the service enforces that JSON Schema cannot state, so a schema-valid body may break them
# (422 naming the rule). Each one is documented in the API section of the README.
CROSS_FIELD_RULES = frozenset(
    {
        "accepted_le_samples",  # observation: accepted <= samples
        "grad_norm_pair",  # grad_norm_sum and grad_norm_count together
        "count_le_accepted",  # grad_norm_count <= accepted
        "zero_count_sum",  # grad_norm_count 0 with a positive sum
        "norms_or_sum",  # grad_norms or sum/count, not both
        "norms_le_accepted",  # at most `accepted` norms
        "count_le_rejected",  # rejected_grad_norm_count <= samples - accepted
        "norms_le_rejected",  # at most `samples - accepted` rejected norms
        "min_le_max",  # config: min_samples <= max_samples
        "beta_ge_1",  # config: beta >= 1 unless strategy is gvm-paper
        "alpha_min",  # config: alpha >= 1e-9 unless strategy is gvm-paper
        "strength_min",  # config: a prior strength is 0 or >= 1e-3
        "infeasible_budget",  # the budget cannot meet the run's bounds
        "same_length",  # drawn, drawn_accepted: one entry per prompt id
        "needs_drawn",  # drawn_accepted only with drawn
        "accepted_le_drawn",  # drawn_accepted[i] <= drawn[i]
        "no_topups_in_gvm_paper",  # drawn with a gvm-paper run (the published rule is one-shot)
        "budget_too_large_to_weigh",  # knapsack / GRPO top-ups weigh a bounded number of units
        "int_type",  # 8.0 for an integer field: JSON Schema calls it an integer, we are strict
    }
)


class RequestCounter:
    """Counts every answered request made through `session` (checks' extra requests too), by
    status code, and the reports and allocations that went through."""

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.applied: Counter[str] = Counter()  # "observations" / "allocations" answered 200
        self.session = requests.Session()
        self.session.hooks["response"].append(self._hook)

    @property
    def count(self) -> int:
        return self.statuses.total()

    def _hook(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.statuses[response.status_code] += 1
        if response.status_code == 200 and response.request.method == "POST":
            self.applied[urlsplit(response.url).path.rsplit("/", 1)[-1]] += 1


COUNTER = RequestCounter()


@schemathesis.check
def one_error_shape(ctx: Any, response: Response, case: Case) -> bool | None:
    """Every 4xx/5xx answer is `{"error": {...}}` with the request id of the header."""
    if response.status_code < 400:
        return None
    body = ErrorResponse.model_validate_json(response.content)
    header_id = response.headers.get("x-request-id", [None])[0]
    if body.error.request_id != header_id:
        raise AssertionError(
            f"error.request_id {body.error.request_id!r} != X-Request-ID {header_id!r}"
        )
    if response.status_code == 401 and "www-authenticate" not in response.headers:
        raise AssertionError("401 without WWW-Authenticate")
    return True


@schemathesis.check
def schema_valid_is_accepted(ctx: Any, response: Response, case: Case) -> bool | None:
    """Positive data is accepted, unless it breaks a rule the schema cannot express."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    if response.status_code < 400 or response.status_code in (401, 403, 404, 409):
        return None  # 404: a generated run id that does not exist; 401: generated credentials
    if response.status_code == 422:
        rules = {d["rule"] for d in json.loads(response.content)["error"]["details"]}
        if rules and rules <= CROSS_FIELD_RULES:
            return True
    raise Failure(
        operation=case.operation.label,
        title="Schema-valid request rejected",
        message=f"{response.status_code}: {response.content[:500]!r}",
    )


@pytest.fixture(scope="module")
def fuzz_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private Redis: the stateful phase empties it before every scenario."""
    with LocalRedis(tmp_path_factory.mktemp("fuzz-redis")) as server:
        yield server.url


@pytest.fixture(scope="module")
def fuzz_service(fuzz_redis: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A service with auth on; it must serve exactly the schema being fuzzed."""
    from conftest import ServiceProcess, service_env

    service = ServiceProcess(
        service_env(fuzz_redis, GVM_API_TOKENS=TOKEN),
        tmp_path_factory.mktemp("fuzz") / "service.log",
    )
    service.start()
    try:
        served = requests.get(f"{service.url}/openapi.json", timeout=10).json()
        assert served == json.loads(COMMITTED.read_text()), "run `python -m budget_service.openapi`"
        yield service.url
    finally:
        service.stop()
        log = service.log_path.read_text()
        assert "Traceback" not in log, log[-4000:]


def _config() -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "headers": {"Authorization": f"Bearer {TOKEN}"},
            "generation": {
                "mode": "all",
                "max-examples": EXAMPLES_PER_OPERATION,
                "deterministic": True,
                "database": "none",
            },
            "checks": {
                # Replaced by `schema_valid_is_accepted` above: the same check, except for the
                # cross-field rules JSON Schema cannot express.
                "positive_data_acceptance": {"enabled": False},
            },
        }
    )


# The committed contract, which the fixture above checks is what the live service serves.
schema = schemathesis.openapi.from_path(COMMITTED, config=_config())


@schema.parametrize()
@hypothesis.settings(deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_every_operation(case: Case, fuzz_service: str) -> None:
    case.call_and_validate(base_url=fuzz_service, session=COUNTER.session)


def test_stateful_links(fuzz_service: str, fuzz_redis: str) -> None:
    """create run -> report -> allocate -> read back, following the schema's links. Every
    scenario starts from an empty Redis, so a scenario replays the same way when Hypothesis
    shrinks it."""
    redis = Redis.from_url(fuzz_redis)

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            redis.flushdb()

        def get_call_kwargs(self, case: Case) -> dict[str, Any]:
            return {"base_url": fuzz_service, "session": COUNTER.session}

    Workflow.run(
        settings=hypothesis.settings(
            max_examples=STATEFUL_SCENARIOS,
            stateful_step_count=8,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            derandomize=True,
            database=None,
        )
    )
    redis.close()


def test_enough_requests_were_made() -> None:
    """Runs last in this module: the fuzzing above really sent >= MIN_REQUESTS requests, none
    was a 5xx, and reports and allocations were really applied (the links reached them)."""
    print(f"\nfuzz: {COUNTER.count} requests, by status {sorted(COUNTER.statuses.items())}, "
          f"applied {dict(COUNTER.applied)}")  # fmt: skip
    assert COUNTER.count >= MIN_REQUESTS, COUNTER.count
    assert not [status for status in COUNTER.statuses if status >= 500]
    assert COUNTER.applied["observations"] > 0
    assert COUNTER.applied["allocations"] > 0
