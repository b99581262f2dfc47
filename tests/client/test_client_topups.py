"""BudgetClient and AsyncBudgetClient send `drawn` and `drawn_accepted` (top-ups) to the live
service and read the additional samples back; without them the request is the v1 one."""

from __future__ import annotations

from trainer_client import AsyncBudgetClient, BudgetClient

IDS = ["a", "b", "c"]
PILOT = [{"prompt_id": i, "samples": 4, "accepted": k} for i, k in zip(IDS, (0, 2, 4), strict=True)]


def test_the_sync_client_sends_drawn(service_url: str, run_id: str) -> None:
    with BudgetClient(service_url) as client:
        client.put_run(run_id, strategy="knapsack", max_samples=6)
        client.report(run_id, 1, PILOT)
        top_up = client.allocate(run_id, IDS, 6, 1, drawn=[4, 4, 4], drawn_accepted=[0, 2, 4])
        assert top_up.total == 6
        assert all(4 + item.samples <= 6 for item in top_up.items)  # the cap bounds totals
        plain = client.allocate(run_id, IDS, 6, 1)
        assert plain.total == 6
        assert client.latest_allocation(run_id) == plain


async def test_the_async_client_sends_drawn(service_url: str, run_id: str) -> None:
    async with AsyncBudgetClient(service_url) as client:
        await client.put_run(run_id, max_samples=5)
        await client.report(run_id, 1, PILOT)
        top_up = await client.allocate(run_id, IDS, 3, 1, drawn=[5, 4, 0])
        # a and b are at or near the cap: the top-up goes where the totals have room
        assert top_up.items[0].samples == 0
        assert sum(item.samples for item in top_up.items) == 3
