"""The bulk hand-off between Faust's fetch loop and the worker's batch loop."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any


class BulkFeed:
    """Messages of one topic handed from Faust's fetch loop to the worker in bulk.

    Faust delivers every record through its per-event path (conductor callback, Event,
    channel queue, Stream, processors, per-event ack): about 100 us of CPU per record,
    which capped one worker well below the model's rate. For the feed's topic the
    patched fetch loop (:func:`_patch_drain`) instead hands over each ``getmany`` result
    as one list of Faust ``ConsumerMessage`` s. Faust still owns the consumer group,
    assignment, seeks and offset commits; the worker acks each message with
    ``Consumer.ack`` once the batch's outputs are acknowledged by the broker.

    Bounded by records (``max_records``), so a slow worker stops the fetch loop (and,
    through the consumer's own buffers, fetching) instead of filling memory.
    """

    def __init__(self, topic: str, max_records: int) -> None:
        self.topic = topic
        self.max_records = max_records
        self._lists: deque[list[Any]] = deque()
        self._queued = 0
        self._readable: asyncio.Event | None = None
        self._writable: asyncio.Event | None = None

    def _events(self) -> tuple[asyncio.Event, asyncio.Event]:
        if self._readable is None or self._writable is None:  # created in the running loop
            self._readable, self._writable = asyncio.Event(), asyncio.Event()
            self._writable.set()
        return self._readable, self._writable

    def has_room(self) -> bool:
        """True while fewer than ``max_records`` records are queued."""
        return self._queued < self.max_records

    def put_nowait(self, msgs: list[Any]) -> None:
        """Queue one fetched list of messages (the fetch loop calls this)."""
        readable, writable = self._events()
        self._lists.append(msgs)
        self._queued += len(msgs)
        readable.set()
        if not self.has_room():
            writable.clear()

    async def put(self, msgs: list[Any]) -> None:
        """Queue ``msgs``, waiting for room first."""
        _, writable = self._events()
        while not self.has_room():
            await writable.wait()
        self.put_nowait(msgs)

    async def get(self, max_: int) -> list[Any]:
        """The next at most ``max_`` messages in fetch order (waits for at least one)."""
        readable, writable = self._events()
        while not self._lists:
            readable.clear()
            await readable.wait()
        out: list[Any] = []
        while self._lists and len(out) < max_:
            head = self._lists[0]
            room = max_ - len(out)
            if len(head) <= room:
                out.extend(self._lists.popleft())
            else:
                out.extend(head[:room])
                self._lists[0] = head[room:]
        self._queued -= len(out)
        if self.has_room():
            writable.set()
        return out

    def clear(self) -> int:
        """Drop everything queued (a rebalance: Faust seeks back to the committed offsets)."""
        n = self._queued
        self._lists.clear()
        self._queued = 0
        if self._writable is not None:
            self._writable.set()
        return n


#: topic name -> its BulkFeed (one worker per process).
_BULK_FEEDS: dict[str, BulkFeed] = {}
