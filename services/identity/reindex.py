"""The re-index job: after the blind-index key rotates, moves every flow's indexes (and
identity claims) to the current key in the background (VerificationService.reindex, in
services.identity.verification.service, says how a
rotation goes). Every identity replica runs it; SKIP LOCKED shares the rows between them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

log = logging.getLogger(__name__)


class Reindexes(Protocol):
    async def reindex(self, *, limit: int = 200) -> int: ...


class IndexRotation:
    def __init__(self, verification: Reindexes, *, interval_seconds: float = 60.0, batch_size: int = 200):
        self._verification = verification
        self._interval = interval_seconds
        self._batch = batch_size

    async def run_once(self) -> int:
        """Re-indexes until nothing is left under an older key; how many flows moved."""
        total = 0
        while moved := await self._verification.reindex(limit=self._batch):
            total += moved
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Every interval, the first one interval after start (a rotation is a rare, unhurried event)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)
            if stop.is_set():
                return
            try:
                moved = await self.run_once()
                if moved:
                    log.info("re-indexed %d verification flows under the current blind-index key", moved)
            except Exception:
                log.exception("re-indexing failed; retrying")
