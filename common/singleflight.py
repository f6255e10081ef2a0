"""Singleflight: concurrent calls for one key share one execution.

The first caller for a key starts the work as a task of its own; every caller,
the first included, awaits it shielded, so one cancelled caller never cancels
the work the others wait on. The entry is removed when the task ends (success
or failure), so a later call starts afresh. No lock is held across an await.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._inflight: dict[Hashable, asyncio.Task[T]] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._inflight

    async def do(self, key: Hashable, work: Coroutine[Any, Any, T]) -> tuple[T, bool]:
        """Run ``work`` unless a call for ``key`` is already running, in which case
        ``work`` is closed unused and the running call's result is shared.
        Returns (result, shared)."""
        task = self._inflight.get(key)
        if task is not None:
            work.close()
            return await asyncio.shield(task), True
        task = asyncio.get_running_loop().create_task(work)
        self._inflight[key] = task
        task.add_done_callback(lambda t: self._finish(key, t))
        return await asyncio.shield(task), False

    def _finish(self, key: Hashable, task: asyncio.Task[T]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved, so a failure nobody awaited is not logged as lost

    async def cancel_all(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
