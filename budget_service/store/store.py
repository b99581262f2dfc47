"""`Store`: async access to run state, one Lua script per write, one round trip per read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import numpy as np
from redis import exceptions as rex
from redis.asyncio.cluster import RedisCluster
from redis.typing import EncodableT

from budget_service.engine import PromptStatistics
from budget_service.errors import ReplicasNotAckedError, RunNotFoundError, StoreUnavailableError
from budget_service.settings import Settings, masked_url
from budget_service.store.connection import (
    Client,
    closed_transport,
    connect,
    report_and_wait,
    unavailable,
)
from budget_service.store.keys import HISTORY_MAX, run_keys
from budget_service.store.records import (
    AppliedReport,
    HistoryPoint,
    Report,
    RunCounts,
    RunRecord,
    Snapshot,
    pack_ids,
    pack_increments,
    pack_point,
    to_statistics,
    to_totals,
    unpack_blob,
    unpack_points,
    unpack_records,
)
from budget_service.store.scripts import (
    DELETE_RUN,
    PATCH_RUN,
    PUT_RUN,
    READ,
    REPORT,
    SAVE_ALLOCATION,
)

T = TypeVar("T")


class Store:
    """Async access to run state; every method is one Redis round trip unless it says so."""

    def __init__(self, client: Client, settings: Settings) -> None:
        self._client = client
        self._deadline = settings.redis_deadline_s
        self._where = masked_url(settings.redis_url or "")  # errors name it, never its password
        self._max_connections = settings.redis_max_connections
        self._report_window_ms = settings.report_id_ttl_s * 1000
        self._report_id_max = settings.report_id_max
        self._ttl_ms = settings.run_ttl_s * 1000
        self._min_replicas = settings.redis_min_replicas_ack
        self._ack_timeout_ms = max(1, round(settings.redis_ack_timeout_s * 1000))  # 0 = forever
        self._report = client.register_script(REPORT)
        self._read = client.register_script(READ)
        self._put_run = client.register_script(PUT_RUN)
        self._patch_run = client.register_script(PATCH_RUN)
        self._save_allocation = client.register_script(SAVE_ALLOCATION)
        self._delete_run = client.register_script(DELETE_RUN)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        return cls(connect(settings), settings)

    async def aclose(self) -> None:
        if isinstance(self._client, RedisCluster):
            await self._client.aclose()
        else:  # the pool was built here, so it is closed here too
            await self._client.aclose(close_connection_pool=True)

    async def _call(self, command: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis call within GVM_REDIS_DEADLINE_S; outages become StoreUnavailableError.

        A pooled connection that the peer reset while it sat idle (a Redis restart, a failover,
        a proxy or firewall dropping idle connections) fails its next command under uvloop with
        a RuntimeError before a byte is sent, and redis-py has already dropped that connection;
        so the call runs again, once per pooled connection at most, on a fresh connection.
        """
        try:
            async with asyncio.timeout(self._deadline):
                for _ in range(self._max_connections):
                    try:
                        return await command()
                    except RuntimeError as exc:
                        if not closed_transport(exc):
                            raise
                return await command()
        except RuntimeError as exc:
            if closed_transport(exc):
                raise StoreUnavailableError("Redis closed every pooled connection") from exc
            raise
        except TimeoutError as exc:
            raise StoreUnavailableError(
                f"Redis did not answer within {self._deadline:g} s (GVM_REDIS_DEADLINE_S)"
            ) from exc
        except rex.RedisError as exc:
            if unavailable(exc):
                raise StoreUnavailableError(
                    f"Redis unavailable at {self._where}: {type(exc).__name__}"
                ) from exc
            raise

    async def ping(self) -> None:
        await self._call(self._client.ping)

    async def put_run(self, run_id: str, config_json: str, half_life: float | None) -> bool:
        """Create or replace a run's config (statistics kept). True when created."""
        created, _ = await self._call(
            lambda: self._put_run(
                keys=run_keys(run_id),
                args=[config_json, _half_life_arg(half_life), _now_ms(), self._ttl_ms],
            )
        )
        return bool(created)

    async def get_run(self, run_id: str) -> RunRecord:
        values = await self._call(
            lambda: self._client.hmget(run_keys(run_id)[0], ["config", "created_at", "updated_at"])
        )
        config, created, updated = cast(list[bytes | None], values)
        if config is None or created is None or updated is None:
            raise RunNotFoundError(run_id)
        return RunRecord(run_id, config, int(created), int(updated))

    async def replace_config_if(
        self, run_id: str, expected: bytes, config_json: str, half_life: float | None
    ) -> bool:
        """Set the config only if it still equals `expected` (PATCH). False: changed meanwhile."""
        args: list[EncodableT] = [
            expected,
            config_json,
            _half_life_arg(half_life),
            _now_ms(),
            self._ttl_ms,
        ]
        result = await self._call(lambda: self._patch_run(keys=run_keys(run_id), args=args))
        if result[0] == -1:
            raise RunNotFoundError(run_id)
        return bool(result[0] == 1)

    async def delete_run(self, run_id: str) -> None:
        existed = await self._call(lambda: self._delete_run(keys=run_keys(run_id)))
        if not existed:
            raise RunNotFoundError(run_id)

    async def apply_report(self, run_id: str, report: Report) -> AppliedReport:
        """Apply a whole report atomically, once per report_id (scripts.py; the replica
        acknowledgement: connection.py)."""
        args: list[EncodableT] = [
            report.report_id,
            report.step,
            self._report_window_ms,
            self._report_id_max,
            self._ttl_ms,
            pack_increments(report.increments),
            *pack_ids(report.prompt_ids),
            "1" if self._min_replicas else "0",
        ]
        keys = run_keys(run_id)
        if self._min_replicas:
            (applied, duplicate), acked = await self._call(
                lambda: report_and_wait(
                    self._client, self._report, keys, args, self._min_replicas, self._ack_timeout_ms
                )
            )
        else:
            applied, duplicate = await self._call(lambda: self._report(keys=keys, args=args))
            acked = 0
        if applied == -1:
            raise RunNotFoundError(run_id)
        if acked < self._min_replicas:
            raise ReplicasNotAckedError(
                f"{acked} of {self._min_replicas} replicas confirmed the report within "
                f"{self._ack_timeout_ms} ms (GVM_REDIS_MIN_REPLICAS_ACK, GVM_REDIS_ACK_TIMEOUT_S)"
            )
        return AppliedReport(applied=int(applied), duplicate=bool(duplicate))

    async def read_batch(self, run_id: str, prompt_ids: Sequence[str]) -> Snapshot:
        """Config, run totals and the records of `prompt_ids`, as one consistent snapshot."""
        keys = run_keys(run_id)
        ids = pack_ids(prompt_ids)
        result = await self._call(lambda: self._read(keys=keys[:3], args=ids))
        if result is None:
            raise RunNotFoundError(run_id)
        config, totals, records, seen = result
        return Snapshot(
            config_json=config,
            totals=to_totals(totals),
            stats=to_statistics(unpack_blob(records)),
            seen=np.frombuffer(seen, dtype=np.uint8) == ord("1"),
        )

    async def save_allocation(
        self, run_id: str, allocation_json: bytes, point: HistoryPoint
    ) -> None:
        """Store the latest allocation and append `point` to the run's bounded history."""
        args: list[EncodableT] = [allocation_json, self._ttl_ms, pack_point(point), HISTORY_MAX]
        saved = await self._call(lambda: self._save_allocation(keys=run_keys(run_id), args=args))
        if not saved:
            raise RunNotFoundError(run_id)

    async def latest_allocation(self, run_id: str) -> bytes | None:
        """The last allocation's JSON, or None when the run exists but has none yet."""
        keys = run_keys(run_id)
        exists, latest = await self._call(
            lambda: self._pipeline([("EXISTS", keys[0]), ("GET", keys[4])])
        )
        if not exists:
            raise RunNotFoundError(run_id)
        return latest  # type: ignore[no-any-return]

    async def allocation_history(self, run_id: str) -> list[HistoryPoint]:
        """The run's last HISTORY_MAX allocation points, oldest first."""
        keys = run_keys(run_id)
        exists, points = await self._call(
            lambda: self._pipeline([("EXISTS", keys[0]), ("LRANGE", keys[5], 0, -1)])
        )
        if not exists:
            raise RunNotFoundError(run_id)
        return unpack_points(points)

    async def counts(self, run_id: str) -> RunCounts:
        """Config, totals, number of prompts and remembered report ids (one round trip)."""
        run_key, stats_key, totals_key, reports_key, *_ = run_keys(run_id)
        commands = [
            ("HGET", run_key, "config"),
            ("GET", totals_key),
            ("HLEN", stats_key),
            ("ZCARD", reports_key),
        ]
        config, totals, prompts, reports = await self._call(lambda: self._pipeline(commands))
        if config is None:
            raise RunNotFoundError(run_id)
        return RunCounts(config, to_totals(totals), int(prompts), int(reports))

    async def scan_statistics(
        self, run_id: str, page: int = 10_000
    ) -> AsyncIterator[PromptStatistics]:
        """Every stored prompt record, a page at a time (HSCAN: one round trip per page)."""
        stats_key = run_keys(run_id)[1]
        cursor = 0
        while True:
            cursor, found = await self._call(
                lambda: self._client.hscan(stats_key, cursor, count=page)  # noqa: B023
            )
            assert isinstance(found, dict)
            if found:
                yield to_statistics(unpack_records(cast(list[bytes], list(found.values()))))
            if cursor == 0:
                return

    async def _pipeline(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Commands on keys of one run in one round trip (no MULTI: reads only)."""
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute()


def _half_life_arg(half_life: float | None) -> str:
    return "" if half_life is None else repr(float(half_life))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
