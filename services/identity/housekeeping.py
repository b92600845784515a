"""Housekeeping: what identity keeps only as long as it serves its purpose (PIPL Art. 19,
storage limitation) is deleted on schedule — one-time codes a day after they expired or were
used, and send-limit counters of phones and addresses idle for longer than any window."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from services.identity.codes import OneTimeCodes
from services.identity.limits import AbuseLimits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Swept:
    codes: int
    send_limits: int


class Housekeeping:
    def __init__(
        self, engine: AsyncEngine, codes: OneTimeCodes, limits: AbuseLimits, *, interval_seconds: float = 600.0
    ):
        self._engine = engine
        self._codes = codes
        self._limits = limits
        self._interval = interval_seconds

    async def run_once(self) -> Swept:
        async with self._engine.begin() as conn:
            codes = await self._codes.purge_finished(conn)
            send_limits = await self._limits.prune_send_limits(conn)
        return Swept(codes, send_limits)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                swept = await self.run_once()
                if swept.codes or swept.send_limits:
                    log.info("deleted %d finished codes and %d idle send counters", swept.codes, swept.send_limits)
            except Exception:
                log.exception("identity housekeeping failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)
