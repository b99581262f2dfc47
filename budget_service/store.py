"""Run state in Redis: hash-tagged keys, one Lua script per write, one round trip per read.

Key layout (every key of a run carries the hash tag `{run_id}`, so a run lives on one Redis
Cluster slot and every script below touches keys of one slot only):

    gvm:{RUN}:run      hash    config (RunConfig JSON), half_life ("" = no decay),
                               created_at, updated_at (Unix ms)
    gvm:{RUN}:stats    hash    prompt_id -> record
    gvm:{RUN}:totals   string  record pooled over every prompt of the run
    gvm:{RUN}:reports  zset    report_id -> Redis server time (ms) it was applied
    gvm:{RUN}:latest   string  JSON of the last Allocation served
    gvm:{RUN}:history  list    the last HISTORY_MAX allocations' step, total, predicted and
                               uniform variance (four little-endian float64 each, oldest first)

A record is 56 bytes, seven little-endian float64: samples, accepted, grad_norm_sum,
grad_norm_count, last_step, rejected_grad_norm_sum, rejected_grad_norm_count. Binary keeps every
bit (no decimal round trip) and lets a read of 1,024 prompts be one `numpy.frombuffer` instead
of 7,168 float parses. Records written before the rejected samples' norms existed are the first
40 bytes of that layout: every script and read takes them as zeros for the last two fields.

Writes: `report` applies a whole report in one script: existence of the run, idempotency check
on `report_id`, decay to the report's step (the rule in estimates.py), increments, run totals,
and the report id record, all in one atomic step that reaches the AOF as one unit. Report ids are
kept for `report_id_ttl_s` (by Redis server time) and at most `report_id_max` per run.

Replica acknowledgement (`redis_min_replicas_ack` > 0): the script is followed by `WAIT` on the
same connection (WAIT counts the replicas holding that connection's writes; on a cluster, a
connection to the primary owning the run's slot), and the report is answered only when enough
replicas confirm. A repeated report_id rewrites the run totals unchanged, so its WAIT also covers
the first attempt's write, which an earlier WAIT may not have seen reach the replicas.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import astuple, dataclass
from typing import Any, Final, TypeVar, cast

import numpy as np
import redis.asyncio as aioredis
from numpy.typing import NDArray
from redis import exceptions as rex
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.typing import EncodableT

from budget_service.engine import PromptStatistics, RunTotals
from budget_service.errors import ReplicasNotAckedError, RunNotFoundError, StoreUnavailableError
from budget_service.settings import Settings, masked_url

T = TypeVar("T")

RECORD: Final = np.dtype("<f8")
# samples, accepted, grad_norm_sum, grad_norm_count, last_step, rejected sum, rejected count
RECORD_FIELDS: Final = 7
RECORD_BYTES: Final = RECORD_FIELDS * RECORD.itemsize
_MISSING: Final = bytes(RECORD_BYTES)

# Prompt ids travel as two arguments, their byte lengths (uint32 LE) and their concatenation,
# not one argument each: packing thousands of arguments costs redis-py more than the round trip.
# Lua 5.1's unpack() has a C-stack limit (~8,000 values), so commands take ids in chunks.
_LUA_HELPERS = """
local CHUNK = 1000
local function touch(ttl)
  if ttl > 0 then for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end end
end
local function split_ids(lengths, blob)
  local ids, pos = {}, 1
  for i = 1, #lengths / 4 do
    local n = struct.unpack('<I4', lengths, 4 * i - 3)
    ids[i] = string.sub(blob, pos, pos + n - 1)
    pos = pos + n
  end
  return ids
end
-- A record as a table of its seven fields; one of the 40-byte layout gets zero rejected norms.
local function unpack_record(s)
  if #s == 40 then
    local r = {struct.unpack('<ddddd', s)}
    r[6], r[7] = 0, 0
    return r
  end
  return {struct.unpack('<ddddddd', s)}
end
local function hmget(key, ids)
  local values = {}
  for lo = 1, #ids, CHUNK do
    local got = redis.call('HMGET', key, unpack(ids, lo, math.min(lo + CHUNK - 1, #ids)))
    for j = 1, #got do values[lo + j - 1] = got[j] end
  end
  return values
end
"""

# KEYS: run, stats, totals, reports, latest
# ARGV: report_id, step, window_ms, max_ids, ttl_ms, numbers (n x 6 float64 LE: the record's
# fields but last_step), id lengths, ids, sync ("1": a duplicate rewrites the totals, see above)
# -> {applied, duplicate}; {-1, 0} when the run does not exist.
_REPORT = (
    _LUA_HELPERS
    + """
local run = redis.call('HMGET', KEYS[1], 'config', 'half_life')
if not run[1] then return {-1, 0} end
local report_id = ARGV[1]
if redis.call('ZSCORE', KEYS[4], report_id) then
  local totals = redis.call('GET', KEYS[3])
  if ARGV[9] == '1' and totals then redis.call('SET', KEYS[3], totals, 'KEEPTTL') end
  return {0, 1}
end

local step = tonumber(ARGV[2])
local half_life = tonumber(run[2])  -- nil: no decay
local numbers = ARGV[6]
local ids = split_ids(ARGV[7], ARGV[8])
local n = #ids

local function decay(elapsed)
  if half_life == nil or elapsed <= 0 then return 1 end
  return 0.5 ^ (elapsed / half_life)
end
-- Stored values at step s seen at step t >= s are scaled by decay(t - s); an observation older
-- than the stored last_step is itself scaled by decay(s - t) and last_step stays.
local SUMMED = {1, 2, 3, 4, 6, 7}  -- the record fields that add up (5 is last_step)
local function merge(rec, d)
  local out = {}
  if rec == nil then
    for k = 1, 6 do out[SUMMED[k]] = d[k] end
    out[5] = step
  elseif step >= rec[5] then
    local f = decay(step - rec[5])
    for k = 1, 6 do out[SUMMED[k]] = rec[SUMMED[k]] * f + d[k] end
    out[5] = step
  else
    local f = decay(rec[5] - step)
    for k = 1, 6 do out[SUMMED[k]] = rec[SUMMED[k]] + d[k] * f end
    out[5] = rec[5]
  end
  return out
end
local function pack(rec)
  return struct.pack('<ddddddd', rec[1], rec[2], rec[3], rec[4], rec[5], rec[6], rec[7])
end

local stored = hmget(KEYS[2], ids)

local recs, order = {}, {}
local total = {0, 0, 0, 0, 0, 0}
local pos = 1
for i = 1, n do
  local pid = ids[i]
  local d = {struct.unpack('<dddddd', numbers, pos)}
  pos = d[7]
  local rec = recs[pid]
  if rec == nil then
    order[#order + 1] = pid
    if stored[i] then rec = unpack_record(stored[i]) end
  end
  recs[pid] = merge(rec, d)
  for k = 1, 6 do total[k] = total[k] + d[k] end
end

local out = {}
for k = 1, #order do
  local pid = order[k]
  out[#out + 1] = pid
  out[#out + 1] = pack(recs[pid])
  if #out >= 2 * CHUNK then redis.call('HSET', KEYS[2], unpack(out)); out = {} end
end
if #out > 0 then redis.call('HSET', KEYS[2], unpack(out)) end

local totals = redis.call('GET', KEYS[3])
local trec = nil
if totals then trec = unpack_record(totals) end
redis.call('SET', KEYS[3], pack(merge(trec, total)))

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[4], now, report_id)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', string.format('(%d', now - tonumber(ARGV[3])))
local extra = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[4])
if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[4], 0, extra - 1) end
touch(tonumber(ARGV[5]))
return {n, 0}
"""
)

# KEYS: run, stats, totals; ARGV: id lengths, ids
# -> {config, totals|nil, records (n x 56 bytes, zeros where missing), seen ("1"/"0" per id)},
# or nil when the run does not exist. Two strings instead of n replies: less to parse.
_READ = (
    _LUA_HELPERS
    + """
local config = redis.call('HGET', KEYS[1], 'config')
if not config then return nil end
local values = hmget(KEYS[2], split_ids(ARGV[1], ARGV[2]))
local zero, old_tail = string.rep('\\0', 56), string.rep('\\0', 16)
local records, seen = {}, {}
for i = 1, #values do
  if not values[i] then records[i] = zero; seen[i] = '0'
  elseif #values[i] == 40 then records[i] = values[i] .. old_tail; seen[i] = '1'
  else records[i] = values[i]; seen[i] = '1' end
end
return {config, redis.call('GET', KEYS[3]), table.concat(records), table.concat(seen)}
"""
)

# KEYS: run, stats, totals, reports, latest; ARGV: config, half_life, now_ms, ttl_ms
# -> {created (0/1), created_at}
_PUT_RUN = (
    _LUA_HELPERS
    + """
local created = redis.call('HSETNX', KEYS[1], 'created_at', ARGV[3])
redis.call('HSET', KEYS[1], 'config', ARGV[1], 'half_life', ARGV[2], 'updated_at', ARGV[3])
touch(tonumber(ARGV[4]))
return {created, redis.call('HGET', KEYS[1], 'created_at')}
"""
)

# Compare-and-set of the config (PATCH): KEYS as PUT; ARGV: expected, config, half_life, now_ms,
# ttl_ms -> {1, created_at} done; {0} the config changed meanwhile; {-1} no such run.
_PATCH_RUN = (
    _LUA_HELPERS
    + """
local current = redis.call('HGET', KEYS[1], 'config')
if not current then return {-1} end
if current ~= ARGV[1] then return {0} end
redis.call('HSET', KEYS[1], 'config', ARGV[2], 'half_life', ARGV[3], 'updated_at', ARGV[4])
touch(tonumber(ARGV[5]))
return {1, redis.call('HGET', KEYS[1], 'created_at')}
"""
)

# KEYS: run, stats, totals, reports, latest, history; ARGV: allocation JSON, ttl_ms, history
# point (32 bytes), HISTORY_MAX -> 1, or 0 if no run.
_SAVE_ALLOCATION = (
    _LUA_HELPERS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[5], ARGV[1])
redis.call('RPUSH', KEYS[6], ARGV[3])
redis.call('LTRIM', KEYS[6], -tonumber(ARGV[4]), -1)
touch(tonumber(ARGV[2]))
return 1
"""
)

# KEYS: all keys of the run -> 1 if the run existed. UNLINK frees big hashes off the main thread.
_DELETE_RUN = """
local existed = redis.call('EXISTS', KEYS[1])
redis.call('UNLINK', unpack(KEYS))
return existed
"""

# Errors that mean "Redis cannot serve right now" (503), as opposed to a bug (500).
_UNAVAILABLE_ERRORS: Final = (
    rex.ConnectionError,  # includes BusyLoadingError (AOF replay after a restart)
    rex.TimeoutError,
    rex.ClusterError,
    rex.ClusterDownError,
    rex.TryAgainError,
    rex.MasterDownError,
    rex.ReadOnlyError,
    rex.OutOfMemoryError,
    rex.MaxConnectionsError,
)
_UNAVAILABLE_REPLIES: Final = ("MISCONF", "NOREPLICAS", "LOADING", "CLUSTERDOWN", "OOM ")
_KEY_NAMES: Final = ("run", "stats", "totals", "reports", "latest", "history")
HISTORY_MAX: Final = 1000  # allocations kept per run for the run page's curves (32 KB)


def run_keys(run_id: str) -> tuple[str, ...]:
    """All keys of a run, in the order the scripts expect them."""
    tag = f"gvm:{{{run_id}}}"
    return tuple(f"{tag}:{name}" for name in _KEY_NAMES)


@dataclass(frozen=True, slots=True)
class RunRecord:
    run_id: str
    config_json: bytes
    created_at_ms: int
    updated_at_ms: int


@dataclass(frozen=True, slots=True)
class Report:
    """A validated report, flattened: one row of `increments` per prompt id, in order."""

    report_id: str
    step: int
    prompt_ids: Sequence[str]
    increments: NDArray[np.float64]  # (n, 6): the record's fields but last_step, in its order


@dataclass(frozen=True, slots=True)
class AppliedReport:
    """What `apply_report` did: observations applied, or nothing for a repeated report_id."""

    applied: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What an allocation needs, read in one round trip."""

    config_json: bytes
    totals: RunTotals
    stats: PromptStatistics
    seen: NDArray[np.bool_]  # False where the prompt has no stored record


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    """One allocation in a run's history (step and total are exact in float64)."""

    step: int
    total: int
    predicted_variance: float
    uniform_variance: float


@dataclass(frozen=True, slots=True)
class RunCounts:
    config_json: bytes
    totals: RunTotals
    prompts: int
    reports: int  # report ids still remembered (inside the idempotency window)


def _records(values: Sequence[bytes | None]) -> NDArray[np.float64]:
    """Decode packed records into an (n, 7) array; missing records are zeros, and so are the
    rejected norms of a record of the older 40-byte layout."""
    return _record_blob(
        b"".join(_MISSING if v is None else v.ljust(RECORD_BYTES, b"\0") for v in values)
    )


def _record_blob(blob: bytes) -> NDArray[np.float64]:
    return np.frombuffer(blob, dtype=RECORD).reshape(-1, RECORD_FIELDS)


def _pack_ids(prompt_ids: Sequence[str]) -> tuple[bytes, bytes]:
    """(uint32 LE byte lengths, concatenated UTF-8): two arguments for any number of ids."""
    encoded = [pid.encode() for pid in prompt_ids]
    lengths = np.fromiter(map(len, encoded), dtype="<u4", count=len(encoded))
    return lengths.tobytes(), b"".join(encoded)


def _totals(value: bytes | None) -> RunTotals:
    s, a, gs, gc, last, rs, rc = _records([value])[0]
    return RunTotals(
        samples=float(s),
        accepted=float(a),
        grad_norm_sum=float(gs),
        grad_norm_count=float(gc),
        last_step=int(last),
        rejected_grad_norm_sum=float(rs),
        rejected_grad_norm_count=float(rc),
    )


def _statistics(records: NDArray[np.float64]) -> PromptStatistics:
    return PromptStatistics(
        samples=records[:, 0].copy(),
        accepted=records[:, 1].copy(),
        grad_norm_sum=records[:, 2].copy(),
        grad_norm_count=records[:, 3].copy(),
        last_step=records[:, 4].astype(np.int64),
        rejected_grad_norm_sum=records[:, 5].copy(),
        rejected_grad_norm_count=records[:, 6].copy(),
    )


def _closed_transport(exc: RuntimeError) -> bool:
    """uvloop's error for a write on a transport that is already closed (redis-py expects an
    OSError there, as the standard event loop would give)."""
    return "handler is closed" in str(exc)


def _unavailable(exc: rex.RedisError) -> bool:
    if isinstance(exc, _UNAVAILABLE_ERRORS):
        return True
    return isinstance(exc, rex.ResponseError) and str(exc).startswith(_UNAVAILABLE_REPLIES)


class Store:
    """Async access to run state; every method is one Redis round trip unless it says so."""

    def __init__(self, client: aioredis.Redis | RedisCluster, settings: Settings) -> None:
        self._client = client
        self._deadline = settings.redis_deadline_s
        self._where = masked_url(settings.redis_url or "")  # errors name it, never its password
        self._max_connections = settings.redis_max_connections
        self._report_window_ms = settings.report_id_ttl_s * 1000
        self._report_id_max = settings.report_id_max
        self._ttl_ms = settings.run_ttl_s * 1000
        self._min_replicas = settings.redis_min_replicas_ack
        self._ack_timeout_ms = max(1, round(settings.redis_ack_timeout_s * 1000))  # 0 = forever
        self._report = client.register_script(_REPORT)
        self._read = client.register_script(_READ)
        self._put_run = client.register_script(_PUT_RUN)
        self._patch_run = client.register_script(_PATCH_RUN)
        self._save_allocation = client.register_script(_SAVE_ALLOCATION)
        self._delete_run = client.register_script(_DELETE_RUN)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """Build the client (no I/O yet): bounded timeouts, one bounded retry with backoff."""
        if settings.redis_url is None:
            raise ValueError("REDIS_URL is not set (the CLI starts an embedded server first)")
        retry = Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.2), settings.redis_retries)
        common: dict[str, Any] = {
            "socket_timeout": settings.redis_timeout_s,
            "socket_connect_timeout": settings.redis_connect_timeout_s,
            "retry": retry,
            "retry_on_error": [rex.ConnectionError, rex.TimeoutError],
            "max_connections": settings.redis_max_connections,
        }
        client: aioredis.Redis | RedisCluster
        if settings.redis_cluster:
            client = RedisCluster.from_url(settings.redis_url, **common)
        else:
            pool = aioredis.BlockingConnectionPool.from_url(
                settings.redis_url, timeout=settings.redis_deadline_s, **common
            )
            client = aioredis.Redis(connection_pool=pool)
        return cls(client, settings)

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
                        if not _closed_transport(exc):
                            raise
                return await command()
        except RuntimeError as exc:
            if _closed_transport(exc):
                raise StoreUnavailableError("Redis closed every pooled connection") from exc
            raise
        except TimeoutError as exc:
            raise StoreUnavailableError(
                f"Redis did not answer within {self._deadline:g} s (GVM_REDIS_DEADLINE_S)"
            ) from exc
        except rex.RedisError as exc:
            if _unavailable(exc):
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
        """Apply a whole report atomically, once per report_id (see the module docstring)."""
        numbers = np.ascontiguousarray(report.increments, dtype=RECORD).tobytes()
        args: list[EncodableT] = [
            report.report_id,
            report.step,
            self._report_window_ms,
            self._report_id_max,
            self._ttl_ms,
            numbers,
            *_pack_ids(report.prompt_ids),
            "1" if self._min_replicas else "0",
        ]
        keys = run_keys(run_id)
        if self._min_replicas:
            (applied, duplicate), acked = await self._call(
                lambda: self._report_and_wait(keys, args)
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
        ids = _pack_ids(prompt_ids)
        result = await self._call(lambda: self._read(keys=keys[:3], args=ids))
        if result is None:
            raise RunNotFoundError(run_id)
        config, totals, records, seen = result
        return Snapshot(
            config_json=config,
            totals=_totals(totals),
            stats=_statistics(_record_blob(records)),
            seen=np.frombuffer(seen, dtype=np.uint8) == ord("1"),
        )

    async def save_allocation(
        self, run_id: str, allocation_json: bytes, point: HistoryPoint
    ) -> None:
        """Store the latest allocation and append `point` to the run's bounded history."""
        packed = np.array(astuple(point), dtype=RECORD).tobytes()
        args: list[EncodableT] = [allocation_json, self._ttl_ms, packed, HISTORY_MAX]
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
        rows = np.frombuffer(b"".join(points), dtype=RECORD).reshape(-1, 4)
        return [
            HistoryPoint(int(step), int(total), predicted, uniform)
            for step, total, predicted, uniform in rows.tolist()
        ]

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
        return RunCounts(config, _totals(totals), int(prompts), int(reports))

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
                yield _statistics(_records(cast(list[bytes], list(found.values()))))
            if cursor == 0:
                return

    async def _report_and_wait(
        self, keys: Sequence[str], args: Sequence[EncodableT]
    ) -> tuple[list[int], int]:
        """The report script, then WAIT, on one connection: (script's answer, replicas that hold
        the write). Two round trips at most: the first of a process may have to load the script."""
        wait = ("WAIT", self._min_replicas, self._ack_timeout_ms)
        for _ in range(2):
            evalsha = ("EVALSHA", self._report.sha, len(keys), *keys, *args)
            try:
                if isinstance(self._client, RedisCluster):
                    result, acked = await self._on_slot_primary(keys[0], evalsha, wait)
                else:
                    pipe = self._client.pipeline(transaction=False)
                    pipe.execute_command(*evalsha)
                    pipe.execute_command(*wait)
                    result, acked = await pipe.execute()
                return result, int(acked)
            except rex.NoScriptError:
                await self._client.script_load(_REPORT)
        raise StoreUnavailableError("Redis lost the report script twice in a row")

    async def _on_slot_primary(self, key: str, *commands: tuple[EncodableT, ...]) -> list[Any]:
        """Commands on one connection to the primary that the client maps `key`'s slot to.

        The cluster pipeline cannot promise one connection: after a failover it re-routes each
        failed command on its own. Here a stale slot map or a dead node is an error instead; the
        report then goes through the client's ordinary path, which follows MOVED and refreshes the
        map, and is not acknowledged (503: the client's retry takes the fresh route).
        """
        assert isinstance(self._client, RedisCluster)
        node = self._client.get_node_from_key(key)
        assert node is not None
        connection = node.acquire_connection()
        try:
            await connection.send_packed_command(connection.pack_commands(commands))
            return [await connection.read_response() for _ in commands]
        except rex.NoScriptError:
            await connection.disconnect()  # the WAIT reply is still unread
            raise
        except (rex.RedisError, OSError) as exc:
            await connection.disconnect()
            evalsha = commands[0]
            await self._client.execute_command(*evalsha)  # follows MOVED, refreshes the map
            raise ReplicasNotAckedError(
                f"the primary of the run's slot changed or failed ({type(exc).__name__})"
            ) from exc
        finally:
            node.release(connection)

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


def config_to_json(config: dict[str, Any]) -> str:
    """Canonical JSON for a stored config (sorted keys: equal configs give equal bytes)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
