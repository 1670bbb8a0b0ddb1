"""Diagnosis for bench/queue_bench.py: where a slow grant's time went, and what the host itself can do.

`serve_gateway(argv, probe=..., trace=...)` runs `gpu-queue-server` with bench-only instrumentation patched in (the
production code carries none of it):
- trace: every answer carries `x-bench-t: rx,enter,exit,redis` — CLOCK_MONOTONIC seconds (the clock of the client's
  `loop.time()` too, so the two processes' stamps compare) when the request's first bytes reached uvicorn, when the
  ASGI app was entered, when it started its answer, and the seconds spent awaiting Redis scripts inside it.
- probe: a 1 ms ticker on the gateway's loop (`LoopProbe`), samples written to $QUEUE_BENCH_PROBE at shutdown.

`serve_floor(port)` is the control: the smallest keep-alive HTTP server uvloop can run, answering every request at
once with a canned grant. The same client at the same rate against it gives the host's floor (scheduler wake-ups,
loopback, the client's own cost): the part of the gateway's tail that no gateway code could remove.

`cpu_times()` reads /proc/stat, so a run can report steal (a VM's vCPU waiting for the hypervisor) and busy time.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import time
from pathlib import Path
from typing import Any

REDIS_S: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar("bench_redis_s", default=None)
STAMP_HEADER = b"x-bench-t"


class LoopProbe:
    """Records how late a 1 ms ticker fires on the running loop (late = the loop was busy or the process waited)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []  # (wall time, lateness in s)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            self.samples.append((time.time(), time.perf_counter() - t - 0.001))


def _install_trace() -> None:
    """Patch the protocol (arrival stamp), the scheduler (Redis time) and the app factory (the header)."""
    import gpuqueue.cli
    import gpuqueue.scheduler
    from gpuqueue.oneshot import OneWriteHttpToolsProtocol

    received = OneWriteHttpToolsProtocol.data_received
    headers_complete = OneWriteHttpToolsProtocol.on_headers_complete

    def data_received(self: Any, data: bytes) -> None:
        if getattr(self, "_bench_rx", None) is None:
            self._bench_rx = time.monotonic()
        received(self, data)

    def on_headers_complete(self: Any) -> None:
        headers_complete(self)
        self.scope["bench_rx"] = self._bench_rx
        self._bench_rx = None  # the next request's bytes stamp anew

    OneWriteHttpToolsProtocol.data_received = data_received  # type: ignore[method-assign]
    OneWriteHttpToolsProtocol.on_headers_complete = on_headers_complete  # type: ignore[method-assign]

    call = gpuqueue.scheduler.Scheduler._call

    async def timed_call(self: Any, name: str, op: dict[str, Any]) -> Any:
        t = time.monotonic()
        try:
            return await call(self, name, op)
        finally:
            spent = REDIS_S.get()
            if spent is not None:
                spent[0] += time.monotonic() - t

    gpuqueue.scheduler.Scheduler._call = timed_call  # type: ignore[method-assign]

    create_app = gpuqueue.cli.create_app

    def traced_app(*args: Any, **kwargs: Any) -> Any:
        app = create_app(*args, **kwargs)

        async def wrapper(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            enter = time.monotonic()
            spent = [0.0]
            REDIS_S.set(spent)

            async def stamped(message: Any) -> None:
                if message["type"] == "http.response.start":
                    stamp = f"{scope.get('bench_rx') or enter:.6f},{enter:.6f},{time.monotonic():.6f},{spent[0]:.6f}"
                    message = {**message, "headers": [*message.get("headers", []), (STAMP_HEADER, stamp.encode())]}
                await send(message)

            await app(scope, receive, stamped)

        return wrapper

    gpuqueue.cli.create_app = traced_app  # type: ignore[assignment]


def serve_gateway(argv: list[str], *, probe: bool, trace: bool) -> int:
    import gpuqueue.gateway
    from gpuqueue.cli import main as gateway_main

    if trace:
        _install_trace()
    if probe:
        ticker = LoopProbe()
        start, stop = gpuqueue.gateway.Gateway.start, gpuqueue.gateway.Gateway.stop

        async def probed_start(self: gpuqueue.gateway.Gateway) -> None:
            await start(self)
            ticker.start()

        async def probed_stop(self: gpuqueue.gateway.Gateway) -> None:
            # uvicorn re-raises SIGTERM once it has stopped, so nothing after gateway_main's return runs
            await asyncio.to_thread(Path(os.environ["QUEUE_BENCH_PROBE"]).write_text, json.dumps(ticker.samples))
            await stop(self)

        gpuqueue.gateway.Gateway.start = probed_start  # type: ignore[method-assign]
        gpuqueue.gateway.Gateway.stop = probed_stop  # type: ignore[method-assign]
    return gateway_main(argv)


# --- the floor: a canned-answer server -----------------------------------------------------------------------------
_BODY = json.dumps({"success": True, "status": "granted", "lease_id": "generation:floor", "fencing_token": 1}).encode()
_ANSWER = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: " + str(len(_BODY)).encode()
           + b"\r\n\r\n" + _BODY)


class _Canned(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            length = 0
            for line in self.buf[:head_end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            end = head_end + 4 + length
            if len(self.buf) < end:
                return
            self.buf = self.buf[end:]
            self.transport.write(_ANSWER)  # type: ignore[attr-defined]


def serve_floor(port: int) -> int:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Canned, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())
    return 0


# --- host accounting -------------------------------------------------------------------------------------------
def cpu_times() -> dict[str, float]:
    """Aggregate jiffies from /proc/stat (empty where there is none)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return {}
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return {n: float(v) for n, v in zip(names, fields, strict=False)}


def cpu_share(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Steal and busy as % of all CPU time in the window (all cores)."""
    if not before or not after:
        return {}
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    total = sum(delta.values()) or 1.0
    busy = total - delta.get("idle", 0.0) - delta.get("iowait", 0.0) - delta.get("steal", 0.0)
    return {"steal_pct": round(100 * delta.get("steal", 0.0) / total, 3), "busy_pct": round(100 * busy / total, 2)}


# --- where the time went ---------------------------------------------------------------------------------------
SEGMENTS = ("client_lag", "to_gateway", "in_uvicorn", "handler", "redis", "back_to_client")


def segments(scheduled: float, sent: float, done: float, stamp: str | None) -> dict[str, float] | None:
    """One request's milliseconds per segment (None without the gateway's stamp)."""
    if not stamp:
        return None
    rx, enter, exit_, redis_s = (float(x) for x in stamp.split(","))
    return {"client_lag": sent - scheduled, "to_gateway": rx - sent, "in_uvicorn": enter - rx,
            "handler": exit_ - enter - redis_s, "redis": redis_s, "back_to_client": done - exit_}


def breakdown(rows: list[tuple[float, dict[str, float]]], pct: Any) -> dict[str, Any]:
    """Per-segment p50/p99 over all requests, and the mean of each segment over the slowest 1% (where the tail is)."""
    if not rows:
        return {}
    out: dict[str, Any] = {"all": {}, "slowest_1pct_mean": {}}
    for seg in SEGMENTS:
        values = [r[seg] * 1000 for _, r in rows]
        out["all"][seg] = {"p50_ms": round(pct(values, 0.5), 3), "p99_ms": round(pct(values, 0.99), 3)}
    slow = sorted(rows, key=lambda r: r[0])[-max(1, len(rows) // 100):]
    for seg in SEGMENTS:
        out["slowest_1pct_mean"][seg] = round(sum(r[seg] for _, r in slow) * 1000 / len(slow), 3)
    out["slowest_1pct_total_ms"] = round(sum(t for t, _ in slow) * 1000 / len(slow), 3)
    return out


# --- Redis's own view: how long the scripts ran inside redis-server ------------------------------------------------
SLOWLOG_US = 250


def redis_watch_start(port: int) -> None:
    """Log every command slower than SLOWLOG_US inside redis-server, and zero its per-command stats."""
    import redis

    r = redis.Redis(port=port)
    r.config_set("slowlog-log-slower-than", SLOWLOG_US)
    r.config_set("slowlog-max-len", 10000)
    r.slowlog_reset()
    r.config_resetstat()
    r.close()


def redis_watch_read(port: int) -> dict[str, Any]:
    """Scripts' mean execution time in redis-server, and the commands that ran over SLOWLOG_US (then reset both)."""
    import redis

    r = redis.Redis(port=port)
    stats = r.info("commandstats")
    slow = r.slowlog_get(10000)
    r.slowlog_reset()
    r.config_resetstat()
    r.close()
    scripts = {k: {"calls": v["calls"], "usec_per_call": v["usec_per_call"]} for k, v in stats.items()
               if k.startswith("cmdstat_evalsha") or k.startswith("cmdstat_eval")}
    durations = sorted(int(e["duration"]) for e in slow)
    return {"scripts": scripts, "over_us": SLOWLOG_US, "slow_count": len(durations),
            "slow_max_us": durations[-1] if durations else 0,
            "slow_p50_us": durations[len(durations) // 2] if durations else 0}
