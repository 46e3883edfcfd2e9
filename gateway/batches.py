"""Group commit for the gateway's statements: calls that arrive together share one.

A PostgreSQL statement's fixed cost (the round trip, the executor's start, the
commit) is about 200 µs of the server's CPU however many rows it touches, and a
row costs a few. So each event loop runs its admissions (and, apart, its
settlements) through a :class:`Batcher`: a call sent while fewer than
``in_flight`` statements are running goes at once, alone, and adds no wait; calls
that arrive while they run are sent together as the next statement. Under load
the statement count per call falls, so the database keeps up with more calls.

A batch holds one call per key (the agent): two calls of one agent in one
statement would update its row once. A second call waits for the next batch.

Off the client's path (settlements), a batch may also wait a moment for company:
with ``linger`` set, while ``more_coming()`` says other calls are still in
flight, the next batch is held up to ``linger`` seconds or until it is full. Under
load that makes a few large statements of many small ones; a lone call (nothing
else in flight) still goes at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")
MAX_BATCH = 64


class Batcher(Generic[Item, Result]):
    def __init__(
        self,
        run: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]],
        *,
        in_flight: int = 1,
        max_batch: int = MAX_BATCH,
        orphaned: Callable[[Item, Result], Awaitable[None]] | None = None,
        outage: tuple[type[BaseException], ...] = (),
        linger: float = 0.0,
        more_coming: Callable[[], bool] = lambda: False,
    ) -> None:
        self._run = run
        self._outage = outage  # errors meaning the database is away, not a bad row
        self._orphaned = orphaned  # told of a result whose caller was cancelled meanwhile
        self._orphans: set[asyncio.Task] = set()
        self._in_flight = in_flight
        self._max_batch = max_batch
        self._running = 0
        self.largest = 0  # the most calls sent in one statement so far
        self._waiting: list[tuple[Hashable, Item, asyncio.Future]] = []
        self._linger, self._more_coming = linger, more_coming
        self._lingering: asyncio.TimerHandle | None = None

    async def submit(self, key: Hashable, item: Item) -> Result:
        """``item``'s result, once the batch it went in has run."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((key, item, future))
        self._start()
        return await future

    def _start(self) -> None:
        if self._worth_waiting():
            if self._lingering is None:
                loop = asyncio.get_running_loop()
                self._lingering = loop.call_later(self._linger, self._linger_over)
            return
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None
        self._send_waiting()

    def _worth_waiting(self) -> bool:
        """Whether to hold the next batch back for company that is on its way."""
        return (
            self._linger > 0
            and self._running < self._in_flight  # (else it waits for a slot anyway)
            and 0 < len(self._waiting) < self._max_batch
            and self._more_coming()
        )

    def _linger_over(self) -> None:
        self._lingering = None
        self._send_waiting()

    def _send_waiting(self) -> None:
        while self._waiting and self._running < self._in_flight:
            batch = self._take()
            self.largest = max(self.largest, len(batch))
            self._running += 1
            asyncio.get_running_loop().create_task(self._send(batch))

    def _take(self) -> list[tuple[Hashable, Item, asyncio.Future]]:
        batch, keys, rest = [], set(), []
        for entry in self._waiting:
            if entry[2].done():  # its caller was cancelled before it was sent
                continue
            if entry[0] in keys or len(batch) >= self._max_batch:
                rest.append(entry)
            else:
                keys.add(entry[0])
                batch.append(entry)
        self._waiting = rest
        return batch

    async def _send(self, batch: list[tuple[Hashable, Item, asyncio.Future]]) -> None:
        try:
            if batch:
                await self._resolve(batch)
        finally:
            self._running -= 1
            self._start()

    async def _resolve(self, batch: list[tuple[Hashable, Item, asyncio.Future]]) -> None:
        try:
            results = await self._run([item for _, item, _ in batch])
        except self._outage as exc:  # the database is away: every call hears it
            _fail(batch, exc)
            return
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch, exc)
                return
            # One call's bad row must not fail the calls batched with it: alone, each
            # succeeds or fails on its own.
            logger.warning("a batch of %d failed (%s); sending each alone", len(batch), exc)
            await asyncio.gather(*(self._resolve([entry]) for entry in batch))
            return
        for (_, item, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
            elif future.cancelled() and self._orphaned is not None:
                # Apart, so the calls batched with it hear now, whatever it meets.
                task = asyncio.get_running_loop().create_task(self._orphaned(item, result))
                self._orphans.add(task)
                task.add_done_callback(self._orphan_done)

    def _orphan_done(self, task: asyncio.Task) -> None:
        self._orphans.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("handling a cancelled call's result failed: %r", task.exception())


def _fail(batch: list[tuple[Hashable, object, asyncio.Future]], exc: BaseException) -> None:
    for _, _, future in batch:
        if not future.done():
            future.set_exception(exc)
