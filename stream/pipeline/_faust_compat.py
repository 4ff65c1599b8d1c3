"""faust-streaming internals the worker relies on, in one place.

Written against faust-streaming 0.15.3 (with its mode-streaming 0.7.1); the code it copies
or wraps is byte-identical at the upstream tags v0.14.0, v0.15.0, v0.15.1, v0.15.2 and in
0.15.3. :data:`TESTED` is the range reviewed and run (``pyproject.toml`` pins the same range).

Private things used, and why the public API is not enough:

* ``Consumer._drain_messages`` is replaced by a copy (:func:`_patch_drain`). Faust has no
  public hook to receive a fetch (a ``getmany`` result) in bulk: its public path is one
  conductor callback, Event, Stream and ack per record (about 100 us of CPU each), which
  capped a worker far below the model's rate. Inside the copy, as in Faust's own loop:
  ``Consumer._read_offset`` / ``_commit_every`` / ``_n_acked`` / ``_add_gap``, and
  ``_stopped`` of the consumer and of the fetcher (mode's ``Service._stopped`` event;
  mode-streaming is not version-checked here: faust-streaming pins its range, and the
  test asserts the attribute on real instances).
* ``AIOKafkaConsumerThread._create_worker_consumer`` is wrapped (:func:`_patch_fetch_wait`):
  Faust hard-codes ``fetch_max_wait_ms=1500`` there and has no setting for it. The wrapper
  sets the wait on the new aiokafka consumer through
  :func:`stream.pipeline._aiokafka_compat.set_fetch_max_wait_ms` (that private attribute
  is aiokafka's, so it lives in that module).
* ``Consumer._committed_offset`` is read by :func:`committed_offset` for the lag metric:
  Faust keeps the last committed offset per partition there and has no accessor for it;
  aiokafka's public ``committed()`` is a broker round trip per partition.

:func:`check_version` (called by both patches, i.e. when the worker's app is built)
refuses any other faust-streaming release with a :class:`~stream.core.errors.ConfigError`:
there is no safe fallback, since the worker's batches arrive only through the patched loop.
``UPSTREAM_SHA256`` fingerprints the upstream code (tests/stream/pipeline/test_faust_compat.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from stream.core.compat import (
    Range,
    Release,
    require_tested,
    resolve,
    upstream_fingerprints,
)
from stream.pipeline import _aiokafka_compat
from stream.pipeline.feed import _BULK_FEEDS, BulkFeed

DIST = "faust-streaming"
WRITTEN_FOR = "faust-streaming 0.15.3, mode-streaming 0.7.1"
#: Releases reviewed and tested: [lowest, first untested).
TESTED: tuple[Release, Release] = ((0, 15, 2), (0, 16))

DRAIN = "faust.transport.consumer:Consumer._drain_messages"
CREATE_CONSUMER = "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer"
#: sha256 of the upstream source of what is copied (DRAIN) or wrapped (CREATE_CONSUMER).
UPSTREAM_SHA256: dict[Range, dict[str, str]] = {
    TESTED: {
        DRAIN: "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417",
        CREATE_CONSUMER: "c2701bfc3e6f6cad95c2be36d6a255a86e2c57d18d36cc1082b5fb5c482d99d7",
    },
}
#: Private attributes of a real faust Consumer that the copied loop and the lag metric use.
CONSUMER_ATTRS = ("_read_offset", "_commit_every", "_n_acked", "_add_gap", "_stopped", "_committed_offset")

# The upstream functions as shipped, kept when patched (the fingerprints hash these).
_ORIGINALS: dict[str, Any] = {}


def check_version() -> str:
    """The installed faust-streaming version; :class:`ConfigError` when it is not in :data:`TESTED`."""
    return require_tested(
        "faust-streaming", DIST, TESTED, "stream/pipeline/_faust_compat.py", WRITTEN_FOR,
        "replaces Faust's private Consumer._drain_messages with a copy that hands fetches over in bulk, "
        "and wraps AIOKafkaConsumerThread._create_worker_consumer",
    )  # fmt: skip


def upstream(path: str) -> Any:
    """The upstream object ``path`` (a function :data:`UPSTREAM_SHA256` records) as shipped, even once patched."""
    return _ORIGINALS.get(path) or resolve(path)


def fingerprints() -> dict[str, str]:
    """sha256 of the installed upstream source of every function :data:`UPSTREAM_SHA256` records."""
    return upstream_fingerprints(UPSTREAM_SHA256, upstream)


def committed_offset(consumer: Any, tp: Any) -> int | None:
    """The offset Faust last committed for ``tp`` (None before the first commit), from its
    private ``_committed_offset`` (no public accessor; see the module docstring)."""
    return consumer._committed_offset.get(tp)  # .get: the defaultdict gains no key


def _patch_fetch_wait(wait_ms: int) -> None:
    """Longest time the broker may hold a fetch when no data is there (``fetch_max_wait_ms``).

    Faust hard-codes 1500 ms; a broker that answers a parked fetch only at this deadline
    (tansu does: `bwp bench broker` measured p99 65 / 40 / 26 ms at 100 / 50 / 20 ms) turns
    it into end-to-end latency. Very short waits cost the other way: at 5,000 states/s,
    10 ms had tansu at about 65 % of a core serving fetches and the worker's latency got
    worse; 50 ms measured best (docs/pipeline.md, Performance).
    """
    check_version()
    _aiokafka_compat.check_version()
    from faust.transport.drivers import aiokafka as fa  # Faust: only the worker's Kafka intake needs it

    cls: Any = fa.AIOKafkaConsumerThread  # Any: bwp's own marker attributes are set on it
    cls._bwp_fetch_wait_ms = wait_ms
    if getattr(cls, "_bwp_patched", False):
        return
    original = cls._create_worker_consumer
    _ORIGINALS[CREATE_CONSUMER] = original

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        _aiokafka_compat.set_fetch_max_wait_ms(consumer, cls._bwp_fetch_wait_ms)
        return consumer

    cls._create_worker_consumer = create
    cls._bwp_patched = True


def _patch_drain() -> None:
    """Faust's fetch loop, with the messages of :data:`_BULK_FEEDS` topics handed over in bulk.

    ``Consumer._drain_messages`` hands every message to the conductor with
    ``await self.wait_first(callback(message), self.suspend_flow.wait())``: two tasks, an
    ``asyncio.wait`` and then Faust's per-event path per record. Messages of a bulk topic
    are collected instead, and each ``getmany`` result goes to its :class:`BulkFeed` in one
    step (through ``wait_first`` on ``suspend_flow`` only when the feed is full, so a
    blocked hand-off never holds up a rebalance). Other topics keep Faust's path, and
    everything else (read offsets, gaps, commit_every) is Faust's loop.
    """
    check_version()
    from faust.transport import consumer as fc  # Faust: only the worker's Kafka intake needs it

    cls: Any = fc.Consumer  # Any: a method is replaced and a marker attribute set
    if getattr(cls, "_bwp_drain_patched", False):
        return
    _ORIGINALS[DRAIN] = cls._drain_messages
    cls._drain_messages = _drain_messages
    cls._bwp_drain_patched = True


async def _drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover - exercised by the worker
    """``Consumer._drain_messages`` of faust-streaming 0.15.3, with the bulk hand-off (see :func:`_patch_drain`)."""
    from faust.transport.consumer import CONSUMER_FETCHING  # Faust: only the worker's Kafka intake needs it

    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    flag_consumer_fetching = CONSUMER_FETCHING
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for
    bulk_feed = _BULK_FEEDS.get
    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(flag_consumer_fetching)
            ait = getmany(timeout=1.0)
            await self.sleep(0)
            bulk: dict[BulkFeed, list[Any]] = {}
            if not self.should_stop:
                async for tp, message in ait:
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset:  # noqa: SIM102 - nested as in Faust's loop (kept line by line)
                            if acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None:  # noqa: SIM102 - as in Faust's loop
                            if self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                        feed = bulk_feed(message.topic)
                        if feed is not None:
                            msgs = bulk.get(feed)
                            if msgs is None:
                                msgs = bulk[feed] = []
                            msgs.append(message)
                        else:
                            num_since_yield += 1
                            if num_since_yield > yield_every:
                                await sleep(0)
                                num_since_yield = 0
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        set_read_offset(tp, offset)
                for feed, msgs in bulk.items():
                    if feed.has_room():
                        feed.put_nowait(msgs)
                    else:
                        # Dropped if the flow is suspended meanwhile (a rebalance):
                        # Faust then seeks back to the committed offsets.
                        await self.wait_first(feed.put(msgs), self.suspend_flow.wait())
                unset_flag(flag_consumer_fetching)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(flag_consumer_fetching)
