"""Every client method against the live service and a real Redis (fixtures in conftest.py)."""

from collections.abc import Callable, Iterator

import pydantic
import pytest

from trainer_client import (
    AsyncBudgetClient,
    AuthenticationError,
    BudgetClient,
    InvalidRequestError,
    NotFoundError,
    Observation,
    RunConfig,
)


@pytest.fixture
def client(service_url: str) -> Iterator[BudgetClient]:
    with BudgetClient(service_url) as c:
        yield c


def test_run_lifecycle(client: BudgetClient, run_id: str) -> None:
    created = client.put_run(run_id, RunConfig(strategy="gvm", min_samples=2), max_samples=16)
    assert created.run_id == run_id
    assert created.config.strategy == "gvm"
    assert (created.config.min_samples, created.config.max_samples) == (2, 16)
    assert created.config.alpha is not None  # the service filled in its defaults
    assert created.created_at is not None

    client.report(run_id, 0, [Observation(prompt_id="a", samples=4, accepted=1)])
    patched = client.patch_run(run_id, half_life_steps=10.0)
    assert patched.config.half_life_steps == 10.0
    assert patched.config.min_samples == 2  # PATCH keeps the other fields

    replaced = client.put_run(run_id, strategy="uniform")
    assert replaced.config.strategy == "uniform"
    assert replaced.config.half_life_steps is None  # PUT resets what it does not set
    assert client.get_run(run_id) == replaced
    assert client.prompt_stats(run_id, "a").samples == 4  # PUT keeps the statistics

    client.delete_run(run_id)
    with pytest.raises(NotFoundError) as missing:
        client.get_run(run_id)
    assert missing.value.code == "run_not_found"
    with pytest.raises(NotFoundError):
        client.delete_run(run_id)


def test_report_is_applied_once_and_read_back_exactly(client: BudgetClient, run_id: str) -> None:
    client.put_run(run_id)
    observations = [
        Observation(prompt_id="math/12", samples=8, accepted=3, grad_norms=[1.5, 2.0, 2.5]),
        {"prompt_id": "b", "samples": 8, "accepted": 2, "grad_norm_sum": 3.0, "grad_norm_count": 2},
        {"prompt_id": "c", "samples": 8, "accepted": 0},
    ]
    first = client.report(run_id, 3, observations, report_id="step-3")
    assert (first.report_id, first.applied, first.duplicate, first.spooled) == (
        "step-3",
        3,
        False,
        False,
    )
    again = client.report(run_id, 3, observations, report_id="step-3")
    assert again.duplicate
    assert again.applied == 0

    stats = client.prompt_stats(run_id, "math/12")  # an id with a slash, as the tasks make them
    assert (stats.samples, stats.accepted, stats.grad_norm_sum, stats.grad_norm_count) == (
        8,
        3,
        6.0,
        3,
    )
    assert stats.last_step == 3
    assert 0 < stats.p_hat < 1
    assert stats.g_hat > 0

    summary = client.summary(run_id)
    assert (summary.prompts, summary.samples, summary.accepted) == (3, 24, 5)
    assert summary.grad_norm_count == 5
    assert summary.p_hat_histogram is not None
    assert sum(summary.p_hat_histogram.counts) == 3

    with pytest.raises(NotFoundError) as unseen:
        client.prompt_stats(run_id, "never-reported")
    assert unseen.value.code == "prompt_not_found"


def test_allocation_follows_the_statistics(client: BudgetClient, run_id: str) -> None:
    client.put_run(run_id, strategy="gvm", min_samples=1, max_samples=32)
    prompts = ["easy", "hard", "mid"]
    uniform = client.allocate(run_id, prompts, budget=30, step=0)
    assert [item.prompt_id for item in uniform.items] == prompts
    assert uniform.total == sum(uniform.counts) <= 30
    assert not uniform.fallback

    client.report(
        run_id,
        1,
        [
            {"prompt_id": "easy", "samples": 16, "accepted": 15, "grad_norms": [1.0] * 15},
            {"prompt_id": "hard", "samples": 16, "accepted": 1, "grad_norms": [1.0]},
            {"prompt_id": "mid", "samples": 16, "accepted": 6, "grad_norms": [1.0] * 6},
        ],
    )
    informed = client.allocate(run_id, prompts, budget=30, step=2)
    by_prompt = dict(zip(prompts, informed.counts, strict=True))
    assert by_prompt["hard"] > by_prompt["mid"] > by_prompt["easy"]
    assert informed.predicted_variance is not None
    assert informed.uniform_variance is not None
    assert informed.predicted_variance <= informed.uniform_variance
    assert client.latest_allocation(run_id) == informed


def test_4xx_errors_name_the_field_and_rule(client: BudgetClient, run_id: str) -> None:
    client.put_run(run_id, min_samples=2)
    with pytest.raises(InvalidRequestError) as infeasible:
        client.allocate(run_id, ["a", "b", "c"], budget=5, step=0)
    assert infeasible.value.status_code == 422
    assert "min_samples" in str(infeasible.value)

    with pytest.raises(InvalidRequestError) as bad_config:
        client.put_run(run_id, min_samples=5, max_samples=2)
    assert bad_config.value.details
    assert {"field", "rule", "message"} <= set(bad_config.value.details[0])

    with pytest.raises(NotFoundError):
        client.allocate(f"{run_id}-missing", ["a"], budget=4, step=0)
    assert client.stats.fallbacks == 0  # only an unreachable service falls back


def test_observations_are_checked_before_they_leave(client: BudgetClient, run_id: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="accepted"):
        client.report(run_id, 0, [{"prompt_id": "a", "samples": 2, "accepted": 3}])
    with pytest.raises(ValueError, match="at least one observation"):
        client.report(run_id, 0, [])


def test_probes(client: BudgetClient) -> None:
    assert client.health()
    assert client.ready()
    with BudgetClient("http://127.0.0.1:9") as dead:  # discard port: nothing listens
        assert not dead.health()
        assert not dead.ready()


def test_bearer_token(start_service: Callable[..., object], run_id: str) -> None:
    service = start_service(GVM_API_TOKENS="s3cret")
    url = service.url  # type: ignore[attr-defined]
    with BudgetClient(url) as anonymous, pytest.raises(AuthenticationError):
        anonymous.get_run(run_id)
    with BudgetClient(url, token="s3cret") as allowed:
        assert allowed.put_run(run_id).run_id == run_id


async def test_async_client_every_method(service_url: str, run_id: str) -> None:
    async with AsyncBudgetClient(service_url) as c:
        assert await c.health()
        assert await c.ready()
        assert (await c.put_run(run_id, min_samples=1)).config.min_samples == 1
        assert (await c.patch_run(run_id, max_samples=8)).config.max_samples == 8
        assert (await c.get_run(run_id)).config.max_samples == 8
        result = await c.report(run_id, 0, [{"prompt_id": "a", "samples": 4, "accepted": 2}])
        assert result.applied == 1
        allocation = await c.allocate(run_id, ["a", "b"], budget=10, step=1)
        assert allocation.total <= 10
        assert await c.latest_allocation(run_id) == allocation
        assert (await c.prompt_stats(run_id, "a")).accepted == 2
        assert (await c.summary(run_id)).samples == 4
        await c.delete_run(run_id)
        with pytest.raises(NotFoundError):
            await c.get_run(run_id)
