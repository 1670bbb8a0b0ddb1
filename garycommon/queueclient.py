"""Async client of the GPU queue gateway, shared by gary, terry and jerry.

Two ways to use the gateway:

* callback style (gary): `enqueue` a task; the gateway POSTs `ready` (with the lease id and fencing token) to the
  task's callback URL when the GPU has room; the worker then calls `set_status(processing)`, `heartbeat` while it
  runs and `set_status(completed|failed)` at the end.
* lease style (our own workers): `async with client.lease(model, lane=..., owner=...) as lease:` waits until the
  gateway grants VRAM, heartbeats in the background and releases on exit (also on exceptions).

Lane "generation" maps to the original's un-prefixed routes (`/tasks`, `/task/status`); every other lane to
`/{lane}/...`. Request bodies are the models of `garycommon.queueprotocol` (docs/gateway.md), built unvalidated:
the gateway validates them, so a bad value gets the gateway's own 4xx as before. Errors become `GaryError`:
`QUEUE_FULL` (429, `details.retry_after`) when the gateway sheds load, `QUEUE_UNAVAILABLE` when it cannot be
reached or answers 5xx, and the gateway's own code/message for 4xx.
No torch here: the gateway's image imports this module without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import BaseModel

from .errors import ErrorCode, GaryError
from .queueprotocol import (
    GENERATION_LANE,
    EnqueueRequest,
    GpuRequest,
    HeartbeatRequest,
    LeaseRequest,
    ReleaseRequest,
    StatusRequest,
    TaskView,
    lane_prefix,
)

log = logging.getLogger(__name__)

__all__ = ["GENERATION_LANE", "Lease", "QueueClient", "lane_prefix"]
# Below uvicorn's 5 s keep-alive: never reuse a connection the server may be closing at that very moment.
KEEPALIVE_EXPIRY_S = 2.0


@dataclass
class Lease:
    """A granted VRAM lease. `lost` turns True when a heartbeat finds that the gateway no longer honours it."""

    id: str
    fencing_token: int
    expires_at: float
    lane: str
    session_id: str
    gpu: str | None = None
    vram_mb: int = 0
    ttl_s: float = 60.0
    lost: bool = False
    peak_vram_mb: int | None = field(default=None, repr=False)  # set by the worker; reported on release (learning)
    outcome: str = "completed"  # set to "failed" to record a failed run (also automatic on exceptions)


def request_body(shape: type[BaseModel], /, **fields: Any) -> dict[str, Any]:
    """A request body of the protocol: the fields given, less the optional ones left None (not validated here)."""
    return shape.model_construct(**fields).model_dump(exclude_none=True)


class QueueClient:
    """Talks to one gateway base URL with one pooled HTTP client; every call has a timeout."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 5.0,
                 gpus: Callable[[], list[str] | None] | None = None) -> None:
        """`gpus`: the cards this process may use (asked at each request; None = any), named in every task and lease
        that does not name its own."""
        self._gpus = gpus
        headers = {"X-API-Key": api_key} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout,
                                       limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S))

    def _own_gpus(self) -> list[str] | None:
        return self._gpus() if self._gpus is not None else None

    # --- transport -------------------------------------------------------------------------------------------
    async def _request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                       read_s: float | None = None, not_found_ok: bool = False) -> dict[str, Any] | None:
        try:
            try:
                resp = await self._http.request(method, path, json=json, params=params,
                                                timeout=read_s if read_s is not None else self.timeout)
            except (httpx.RemoteProtocolError, httpx.ReadError):
                # a pooled connection closed or reset under us; every gateway call is idempotent: send it once more
                resp = await self._http.request(method, path, json=json, params=params,
                                                timeout=read_s if read_s is not None else self.timeout)
        except httpx.HTTPError as exc:
            # one short sentence for the musician (the gateway may be restarting); the operator's detail is in the log
            log.warning("GPU queue at %s unreachable: %r", self.base_url, exc)
            raise GaryError(ErrorCode.QUEUE_UNAVAILABLE, "The GPU queue is unreachable right now; retrying — please try "
                            "again in a few seconds", http_status=503, details={"retry_after": 5}) from exc
        if resp.status_code == 404 and not_found_ok:
            return None
        if resp.status_code >= 400:
            raise _error_from(resp, self.base_url)
        try:
            body = resp.json()
        except ValueError as exc:
            raise GaryError(ErrorCode.QUEUE_UNAVAILABLE, f"GPU queue answered non-JSON ({resp.status_code})",
                            http_status=503) from exc
        return body if isinstance(body, dict) else {"result": body}

    # --- callback-style tasks (gary) ----------------------------------------------------------------------------
    async def enqueue(self, lane: str, session_id: str, task_type: str, data: dict, *, callback_url: str | None = None,
                      model: str | None = None, vram_mb: int | None = None, client_key: str | None = None,
                      job_id: str | None = None) -> dict[str, Any]:
        """Queue a task (idempotent per session, lane and job). Returns the gateway's queue status JSON.

        `job_id` names this one job: callbacks echo it, and a session whose previous job still holds its lease is
        answered 409 instead of being handed that job's task."""
        request = request_body(EnqueueRequest, session_id=session_id, task_type=task_type, data=data,
                       callback_url=callback_url, model=model, vram_mb=vram_mb, client_key=client_key, job_id=job_id,
                       gpus=self._own_gpus())
        out = await self._request("POST", f"{lane_prefix(lane)}/tasks", json=request)
        assert out is not None
        return out

    async def task(self, lane: str, session_id: str) -> dict[str, Any] | None:
        """The gateway's view of a task, or None when it has no such task."""
        return await self._request("GET", f"{lane_prefix(lane)}/tasks/{session_id}", not_found_ok=True)

    async def set_status(self, lane: str, session_id: str, status: str, *, error: str | None = None,
                         fencing_token: int | None = None, peak_vram_mb: int | None = None) -> None:
        """processing (keeps the lease alive) | completed | failed (both free the VRAM and dispatch the next task)."""
        request = request_body(StatusRequest, session_id=session_id, status=status, error=error, fencing_token=fencing_token,
                       peak_vram_mb=peak_vram_mb)
        await self._request("POST", f"{lane_prefix(lane)}/task/status", json=request)

    async def heartbeat(self, lane: str, session_id: str, *, fencing_token: int | None = None) -> None:
        """Extend a granted task's lease by the gateway's TTL."""
        await self._request("POST", f"{lane_prefix(lane)}/tasks/{session_id}/heartbeat",
                            json=request_body(HeartbeatRequest, fencing_token=fencing_token))

    async def check_lease(self, lease_id: str, fencing_token: int) -> dict[str, Any]:
        """Confirm with the gateway that `lease_id` is granted now under `fencing_token` (a fenced heartbeat, so it
        also stays alive). Raises GaryError: 404 no such lease, 409 stale token / not granted."""
        out = await self._request("POST", f"/leases/{lease_id}/heartbeat",
                                  json=request_body(HeartbeatRequest, fencing_token=fencing_token))
        assert out is not None
        return out

    async def cancel(self, lane: str, session_id: str) -> None:
        """Withdraw a queued task or free a granted one (no-op when the gateway has no such task)."""
        await self._request("DELETE", f"{lane_prefix(lane)}/tasks/{session_id}", not_found_ok=True)

    async def register_gpu(self, gpu_id: str, capacity_mb: int, *, host: str | None = None) -> dict[str, Any]:
        """Announce (or resize) a GPU this host serves; tasks go to the first registered GPU where they fit."""
        out = await self._request("POST", "/gpus", json=request_body(GpuRequest, gpu_id=gpu_id, capacity_mb=capacity_mb,
                                                              host=host or None))
        assert out is not None
        return out

    # --- lease-style (our own workers) ----------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lease(self, model: str, *, lane: str, owner: str, vram_mb: int | None = None, resident: bool = False,
                    wait_timeout: float | None = None, client_key: str | None = None,
                    gpus: list[str] | None = None) -> AsyncIterator[Lease]:
        """Wait for a VRAM lease, keep it alive while the block runs, release it afterwards.

        A failure inside the block is recorded as `failed` (the exception propagates). If the wait times out the
        queued request is withdrawn and GaryError(TIMEOUT) is raised.
        """
        # our own id makes the request idempotent: a retried POST cannot queue a second request
        request = request_body(LeaseRequest, model=model, lane=lane, owner=owner, vram_mb=vram_mb, resident=resident,
                       client_key=client_key, session_id=f"lease-{uuid.uuid4().hex[:16]}",
                       gpus=gpus or self._own_gpus())
        state = await self._request("POST", "/leases", json=request)
        assert state is not None
        lease_id = str(state["lease_id"])
        try:
            state = await self._wait_granted(lease_id, state, wait_timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._request("POST", f"/leases/{lease_id}/release",
                                    json=request_body(ReleaseRequest, outcome="cancelled"), not_found_ok=True)
            raise
        granted = TaskView.model_validate(state)
        assert granted.fencing_token is not None and granted.expires_at is not None
        lease = Lease(id=lease_id, fencing_token=granted.fencing_token, expires_at=granted.expires_at, lane=lane,
                      session_id=granted.session_id, gpu=granted.gpu, vram_mb=granted.vram_mb,
                      ttl_s=granted.ttl_s or 60.0)
        beat = asyncio.create_task(self._heartbeat_loop(lease), name=f"lease-heartbeat-{lease_id}")
        try:
            yield lease
        except BaseException:
            lease.outcome = "failed"
            raise
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            await self._release(lease)

    async def _wait_granted(self, lease_id: str, state: dict[str, Any], wait_timeout: float | None) -> dict[str, Any]:
        deadline = None if wait_timeout is None else time.monotonic() + wait_timeout
        while state.get("status") != "granted":
            if state.get("status") in ("failed", "cancelled", "completed"):
                raise GaryError(ErrorCode.QUEUE_UNAVAILABLE,
                                f"lease request {lease_id} ended as {state.get('status')}: {state.get('error') or ''}",
                                http_status=503)
            wait = 10.0
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GaryError(ErrorCode.TIMEOUT, f"no GPU lease for {lease_id} within {wait_timeout:.1f}s "
                                    f"(position {state.get('position')})")
                wait = min(wait, left)
            polled = await self._request("GET", f"/leases/{lease_id}", params={"wait": round(wait, 3)},
                                         read_s=self.timeout + wait)
            if polled is None:
                raise GaryError(ErrorCode.QUEUE_UNAVAILABLE, f"lease request {lease_id} vanished", http_status=503)
            state = polled
        return state

    async def _heartbeat_loop(self, lease: Lease) -> None:
        interval = max(0.05, lease.ttl_s / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                out = await self._request("POST", f"/leases/{lease.id}/heartbeat",
                                          json=request_body(HeartbeatRequest, fencing_token=lease.fencing_token))
                if out is not None:
                    lease.expires_at = float(out.get("expires_at", lease.expires_at))
            except GaryError as err:
                if err.http_status in (404, 409):
                    lease.lost = True
                    log.error("lease %s lost: %s", lease.id, err.message)
                    return
                log.warning("lease %s heartbeat failed (will retry): %s", lease.id, err.message)

    async def _release(self, lease: Lease) -> None:
        request = request_body(ReleaseRequest, fencing_token=lease.fencing_token, outcome=lease.outcome,
                       peak_vram_mb=lease.peak_vram_mb)
        try:
            await self._request("POST", f"/leases/{lease.id}/release", json=request, not_found_ok=True)
        except GaryError as err:
            # The lease then ends by TTL; the worker's result is unaffected.
            log.warning("lease %s release failed: %s", lease.id, err.message)

    async def aclose(self) -> None:
        await self._http.aclose()


def _error_from(resp: httpx.Response, base_url: str) -> GaryError:
    try:
        body = resp.json()
    except ValueError:
        body = {}
    message = str(body.get("error") or body.get("detail") or resp.text[:200] or resp.reason_phrase)
    if resp.status_code == 429:
        retry_after = _int(resp.headers.get("retry-after"), 1)
        return GaryError(ErrorCode.QUEUE_FULL, message, details={"retry_after": retry_after})
    if resp.status_code >= 500:
        return GaryError(ErrorCode.QUEUE_UNAVAILABLE, f"GPU queue at {base_url} failed ({resp.status_code}): {message}",
                         http_status=503)
    try:
        code = ErrorCode(str(body.get("code")))
    except ValueError:
        code = ErrorCode.BAD_REQUEST
    return GaryError(code, message, http_status=resp.status_code)


def _int(value: str | None, default: int) -> int:
    try:
        return max(0, int(float(value))) if value is not None else default
    except ValueError:
        return default
