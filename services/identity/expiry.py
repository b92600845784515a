"""The expiry job: a background job of the identity process that ends
enforcement actions at their until_time.

Each batch marks the due actions EXPIRED, restores their accounts' status
and writes one ledger entry and one incident for reporting per action, in
one transaction (services.identity.store.SqlIdentityStore.expire_due). Any
number of replicas may run it: they share the due accounts with SKIP LOCKED
and an action is expired once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from services.identity.service import IdentityService

log = logging.getLogger(__name__)


class EnforcementExpiry:
    def __init__(self, service: IdentityService, *, interval_seconds: float = 5.0, batch_size: int = 100):
        if interval_seconds <= 0 or batch_size < 1:
            raise ValueError("the expiry job needs a positive interval and batch size")
        self._service = service
        self._interval = interval_seconds
        self._batch = batch_size

    async def run_once(self) -> int:
        """Applies actions that have started, then expires everything due now, batch by batch;
        returns how many actions this run expired."""
        while await self._service.start_due(self._batch) >= self._batch:
            pass
        total = 0
        while True:
            expired = await self._service.expire_due(self._batch)
            total += len(expired)
            if len(expired) < self._batch:
                return total

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                count = await self.run_once()
                if count:
                    log.info("expired %d enforcement actions", count)
            except Exception:
                # The database may be down for a while: log, wait, try again (nothing is half-written).
                log.exception("enforcement expiry failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)
