"""Resident leases: how a service tells the queue gateway about model weights it keeps loaded between jobs.

A resident lease accounts for loaded weights (so other services' leases never overcommit the card) and is kept alive
by the queue client's heartbeat while held. The gateway may declare it lost (restart, operator release): the holder
then takes a new one — after unloading, where the weights were loaded under the old one. With QUEUE_URL empty (solo
mode) there is no gateway: `gateway_client` is None and a `ResidentLease` without an opener holds nothing.

* `ResidentLease`: one lease taken and released outside an `async with` block (terry: per load; gary: per model).
* `hold_resident`: a lease held for the life of the service, taken again whenever it is lost or refused (jerry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from .gpureg import own_gpus
from .keys import secret
from .queueclient import QueueClient
from .settings import Settings

log = logging.getLogger(__name__)

OpenLease = Callable[[], AbstractAsyncContextManager[Any]]  # e.g. lambda: client.lease(model, ..., resident=True)
RETRY_FIRST_SECONDS = 2.0
RETRY_MAX_SECONDS = 60.0
LOST_CHECK_SECONDS = 1.0


def gateway_client(settings: Settings) -> QueueClient | None:
    """The service's own client of the queue gateway, or None in solo mode. It uses the service credential, never a
    user key: a service's leases must not count against (and fill) a user's quota."""
    if not settings.queue_url:
        return None
    return QueueClient(settings.queue_url, api_key=secret(settings.service_key), gpus=own_gpus)


class ResidentLease:
    """`await acquire()` (raises the gateway's refusal or timeout, holding nothing), `lost`, `await release()`."""

    def __init__(self, open_lease: OpenLease | None) -> None:
        self._open = open_lease
        self._stack: contextlib.AsyncExitStack | None = None
        self.lease: Any = None  # the queue client's Lease while held

    @property
    def held(self) -> bool:
        return self._stack is not None

    @property
    def lost(self) -> bool:
        """True once the gateway stopped honouring the held lease (its heartbeat found it gone)."""
        return bool(getattr(self.lease, "lost", False))

    async def acquire(self) -> None:
        if self._open is None or self._stack is not None:
            return
        stack = contextlib.AsyncExitStack()
        self.lease = await stack.enter_async_context(self._open())
        self._stack = stack

    async def release(self) -> None:
        stack, self._stack, self.lease = self._stack, None, None
        if stack is not None:
            await stack.aclose()


async def hold_resident(open_lease: OpenLease, on_state: Callable[[dict[str, object]], None], *,
                        check_seconds: float = LOST_CHECK_SECONDS) -> None:
    """Hold a resident lease until cancelled (then it is released): waits for it, takes a new one at once when the
    gateway declares it lost, and retries with back-off (2 s doubling to 60 s) while the gateway is down or refuses.
    `on_state` hears {"state": "waiting" | "held" (+ lease_id) | "retrying" (+ error)}."""
    delay = RETRY_FIRST_SECONDS
    while True:
        try:
            on_state({"state": "waiting"})
            async with open_lease() as lease:
                on_state({"state": "held", "lease_id": lease.id})
                log.info("resident lease %s held with the queue gateway", lease.id)
                delay = RETRY_FIRST_SECONDS
                while not lease.lost:  # noqa: ASYNC110 - the client flips a plain flag, it offers no event
                    await asyncio.sleep(check_seconds)
                log.warning("resident lease %s was lost (gateway restarted or reaped it); taking a new one", lease.id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # gateway down, refused or lease lost: serve on, retry later
            on_state({"state": "retrying", "error": str(exc)})
            log.warning("queue gateway lease failed (%s); retrying in %.0f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)
