"""redis-py connection internals the window store relies on, in one place.

Written against redis 8.1.0 and reviewed again for 8.2.0: :data:`TESTED` is 8.1 to 8.2,
the releases whose upstream code is fingerprinted below (``pyproject.toml`` allows
``redis>=5.0,<8.3``; any release outside :data:`TESTED` runs on the public fallback below).

What is used, and why the public API is not enough:

* No underscore attribute of redis-py. :func:`send_raw` drives the connection layer
  under ``Pipeline`` instead: ``client.connection_pool.get_connection()`` /
  ``release()``, ``Connection.send_packed_command(..., check_health=False)``,
  ``Connection.read_response()`` and ``Connection.disconnect()``, with the RESP commands
  packed here. Building the commands is most of a pipeline's client-side cost (measured
  ~40 us/record in redis-py's packer vs a few here), and this runs for every telemetry
  record. The layer is not part of the documented client API and its contract has
  moved: before 5.3, ``redis.asyncio``'s ``ConnectionPool.get_connection`` required a
  ``command_name``.
* ``connection_pool`` / ``nodes_manager`` tell a single-node client (one pool: the raw
  path) from a ``RedisCluster`` (a pipeline that routes by slot), as before.

Review of 8.2.0 (2026-12-08, against 8.1.0): ``get_connection`` is unchanged.
``release`` now survives a cancellation while it waits for the pool lock (the connection
goes back to the pool instead of leaking) and moves the event and metrics bookkeeping
into ``_finish_release``; it still returns the connection to the pool and disconnects
one marked for reconnect. ``send_packed_command`` writes through a new
``_send_packed_command`` (``writelines`` + ``drain``, as before, plus a check for a
closing transport) and turns an OS-level ETIMEDOUT into ``ConnectionError`` instead of
``TimeoutError``. ``read_response`` does the same for reads, and now always disconnects
after an unrecoverable parse error; an error reply is still raised as ``ResponseError``
after the reply was consumed. ``disconnect`` clears the socket before its first await
and records its metrics on every path. What :func:`send_raw` relies on holds: one packed
write, one ``read_response`` per command, ``ResponseError`` for an error reply with the
stream in sync, and a disconnect (ours, or redis-py's own) before the connection goes
back to the pool after any other failure. Both new exception types are ``RedisError``s,
which the window store already handles as a failed round trip.

Fallback: :func:`check_version` (called when a :class:`~stream.pipeline.redis_window.WindowStore`
is built) returns False on an untested release and logs a warning; the store then sends
every round trip through the public ``client.pipeline(transaction=False)`` path (as it
does for Redis Cluster): the same replies, more client CPU per record.
``UPSTREAM_SHA256`` fingerprints the upstream code per reviewed release range
(tests/stream/pipeline/test_redis_compat.py; ``bwp compat`` reports what changed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from stream.core.compat import (
    Range,
    Release,
    installed_version,
    is_tested,
    untested_message,
    upstream_fingerprints,
)

log = logging.getLogger(__name__)

DIST = "redis"
WRITTEN_FOR = "redis 8.1.0, reviewed for 8.2.0"
#: Releases reviewed and tested for the raw path: [lowest, first untested).
TESTED: tuple[Release, Release] = ((8, 1), (8, 3))
#: The range ``pyproject.toml`` allows: outside TESTED, the public fallback runs.
SUPPORTED: tuple[Release, Release] = ((5, 0), (8, 3))

_CONN = "redis.asyncio.connection:"
#: Per reviewed release range: sha256 of the upstream source of each connection-layer call
#: :func:`send_raw` makes.
UPSTREAM_SHA256: dict[Range, dict[str, str]] = {
    ((8, 1), (8, 2)): {
        _CONN + "ConnectionPool.get_connection": "9773fd0f3df0077887f282a3ff4e84d89542d108951d148f38f34f2c1201b35e",
        _CONN + "ConnectionPool.release": "e7d317be9fa6b3a128c431835089ce9b27ac9e946c1335f2799b4721b57c76d7",
        _CONN + "AbstractConnection.send_packed_command": "baaeabd916209157db40455f034a0bac6fb3e2db902271313e0702bcbc678321",
        _CONN + "AbstractConnection.read_response": "c1b374bc1a30d0b4f987af86e3ce475a1a1288382dc140b39f436d25beebe5d4",
        _CONN + "AbstractConnection.disconnect": "11194f01c2f6d3c2e23f187f73d0bfeea24109a6a5b85a20454ea4abd2c388b9",
    },
    ((8, 2), (8, 3)): {
        _CONN + "ConnectionPool.get_connection": "9773fd0f3df0077887f282a3ff4e84d89542d108951d148f38f34f2c1201b35e",
        _CONN + "ConnectionPool.release": "da216f4e68c5a3f0564e787dd372731cb1971a55d97ad4375b797f433092cb94",
        _CONN + "AbstractConnection.send_packed_command": "63b7216a33101c84a2dbab1f84be0f1e7b242ce7289771faa706c4b907f88367",
        _CONN + "AbstractConnection.read_response": "e11a03fa28e6c9b1f5d1070ab6c2cf62b2823933106c091448f5070a7d7a7001",
        _CONN + "AbstractConnection.disconnect": "fe6e40c96b1419599dc1598e51136f0d54eb4644a4b75ac8d55900d0dd097fde",
    },
}  # fmt: skip


def check_version() -> bool:
    """True when the installed redis-py is in :data:`TESTED` (the raw path may be used);
    else log a warning: the store falls back to the public pipeline."""
    version = installed_version(DIST)
    if is_tested(version, TESTED):
        return True
    log.warning(
        "%s Until then bwp sends Redis round trips through the public pipeline (slower).",
        untested_message("redis-py", DIST, version, TESTED, "stream/pipeline/_redis_compat.py", WRITTEN_FOR,
                         "writes pipelined EVALSHA commands straight to a pooled connection"),
    )  # fmt: skip
    return False


def fingerprints() -> dict[str, str]:
    """sha256 of the installed upstream source of every function :data:`UPSTREAM_SHA256` records."""
    return upstream_fingerprints(UPSTREAM_SHA256)


def is_cluster(client: Any) -> bool:
    """True for a ``RedisCluster`` client (keys of one call must share a slot)."""
    return hasattr(client, "nodes_manager")


def single_pool(client: Any) -> bool:
    """True when ``client`` sends everything through one connection pool (not ``RedisCluster``)."""
    return hasattr(client, "connection_pool") and not is_cluster(client)


async def send_raw(client: Any, sha: str | bytes, calls: Sequence[tuple[Any, ...]]) -> list[Any]:
    """``EVALSHA sha *call`` for every call, in one round trip on one pooled connection.

    Same replies as ``client.pipeline(transaction=False)`` executed with
    ``raise_on_error=False``: an error reply is returned (as its ``ResponseError``) in its
    place, and the stream stays in sync.
    """
    from redis.exceptions import ResponseError  # redis-py: only code that talks to Redis

    head = b"$7\r\nEVALSHA\r\n$%d\r\n%s\r\n" % (len(sha), sha.encode() if isinstance(sha, str) else sha)
    parts: list[bytes] = []
    add = parts.append
    for call in calls:
        add(b"*%d\r\n" % (len(call) + 2))
        add(head)
        for a in call:
            b = a if isinstance(a, bytes) else str(a).encode()
            add(b"$%d\r\n" % len(b))
            add(b)
            add(b"\r\n")
    pool = client.connection_pool
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command(b"".join(parts), check_health=False)
        replies: list[Any] = []
        for _ in calls:
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:  # an error reply: consumed, the stream stays in sync
                replies.append(exc)
    except BaseException:
        # Timeout / cancellation mid-stream leaves unread replies: never reuse this socket.
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)
    return replies
