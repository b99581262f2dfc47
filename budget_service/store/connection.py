"""How the store reaches Redis: the client (one server or a Cluster), the errors that mean
"Redis cannot serve right now", and replica acknowledgement.

Replica acknowledgement (`redis_min_replicas_ack` > 0): the report script is followed by `WAIT`
on the same connection (WAIT counts the replicas holding that connection's writes; on a cluster,
a connection to the primary owning the run's slot), and the report is answered only when enough
replicas confirm. A repeated report_id rewrites the run totals unchanged, so its WAIT also covers
the first attempt's write, which an earlier WAIT may not have seen reach the replicas.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, TypeAlias

import redis.asyncio as aioredis
from redis import exceptions as rex
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript
from redis.typing import EncodableT

from budget_service.errors import ReplicasNotAckedError, StoreUnavailableError
from budget_service.settings import Settings

Client: TypeAlias = aioredis.Redis | RedisCluster

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


def connect(settings: Settings) -> Client:
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
    if settings.redis_cluster:
        return RedisCluster.from_url(settings.redis_url, **common)
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url, timeout=settings.redis_deadline_s, **common
    )
    return aioredis.Redis(connection_pool=pool)


def closed_transport(exc: RuntimeError) -> bool:
    """uvloop's error for a write on a transport that is already closed (redis-py expects an
    OSError there, as the standard event loop would give)."""
    return "handler is closed" in str(exc)


def unavailable(exc: rex.RedisError) -> bool:
    if isinstance(exc, _UNAVAILABLE_ERRORS):
        return True
    return isinstance(exc, rex.ResponseError) and str(exc).startswith(_UNAVAILABLE_REPLIES)


async def report_and_wait(
    client: Client,
    script: AsyncScript,
    keys: Sequence[str],
    args: Sequence[EncodableT],
    replicas: int,
    timeout_ms: int,
) -> tuple[list[int], int]:
    """The report script, then WAIT, on one connection: (script's answer, replicas that hold
    the write). Two round trips at most: the first of a process may have to load the script."""
    wait = ("WAIT", replicas, timeout_ms)
    for _ in range(2):
        evalsha = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            if isinstance(client, RedisCluster):
                result, acked = await _on_slot_primary(client, keys[0], evalsha, wait)
            else:
                pipe = client.pipeline(transaction=False)
                pipe.execute_command(*evalsha)
                pipe.execute_command(*wait)
                result, acked = await pipe.execute()
            return result, int(acked)
        except rex.NoScriptError:
            await client.script_load(script.script)
    raise StoreUnavailableError("Redis lost the report script twice in a row")


async def _on_slot_primary(
    client: RedisCluster, key: str, *commands: tuple[EncodableT, ...]
) -> list[Any]:
    """Commands on one connection to the primary that the client maps `key`'s slot to.

    The cluster pipeline cannot promise one connection: after a failover it re-routes each
    failed command on its own. Here a stale slot map or a dead node is an error instead; the
    report then goes through the client's ordinary path, which follows MOVED and refreshes the
    map, and is not acknowledged (503: the client's retry takes the fresh route).
    """
    node = client.get_node_from_key(key)
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
        await client.execute_command(*evalsha)  # follows MOVED, refreshes the map
        raise ReplicasNotAckedError(
            f"the primary of the run's slot changed or failed ({type(exc).__name__})"
        ) from exc
    finally:
        node.release(connection)
