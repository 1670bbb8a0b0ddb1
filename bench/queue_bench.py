"""Lease grant round trip of the GPU queue gateway on loopback, at a fixed request rate, behind a 1,000-task backlog.

Runs on the CPU (no GPU involved): a fresh redis-server and one `gpu-queue-server` process, twice: with AOF
(fsync every second, as Dockerfile.redis deploys it) and without persistence (to show what fsync stalls cost).
The backlog is what a busy shared server holds: a friend's batch of 500 tasks pinned to a busy second GPU, and
500 transforms (50 users) waiting behind the one-at-a-time transform lane. The measured
requests (`POST /leases`, generation lane, 1 GB, another key) fit and are granted at once; each is released right
after (releases are extra load, timed separately). Requests are sent on a fixed schedule and latency is measured from
the scheduled send time, so a slow answer cannot hide the ones due behind it. The timed runs send from blocking
sockets (`run_rate_sync`: sleep, then spin the last 0.3 ms to the scheduled instant): the earlier client, a pacing
thread handing each request to an asyncio loop (`--client asyncio`), added 0.15-0.2 ms at p50 and ~0.5 ms at p99
of its own, billed to the gateway.

    .venv/bin/python bench/queue_bench.py [--rate 200] [--seconds 15] [--floor] [--trace] [--out NAME]

Writes bench/results/queue.json and bench/results/queue.md (`--out` another stem for diagnosis runs). `--floor`
adds the same client against a canned-answer server (the host's own floor); `--trace` adds where each grant's time
went (queue_trace.py); `--cpus client=15,gateway=13,redis=14` pins processes.

`--probe-loops` (diagnosis): the config without persistence runs with a 1 ms ticker in the gateway's event loop
and in the client's, reporting how late each tick fired (loop stalls) during the timed window. The ticker keeps
the CPUs from idling, so that config's latencies are not comparable to the unprobed one's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from queue_trace import (
    SEGMENTS,
    LoopProbe,
    breakdown,
    cpu_share,
    cpu_times,
    redis_watch_read,
    redis_watch_start,
    segments,
    serve_floor,
    serve_gateway,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BACKLOG_FRIEND = 500
BACKLOG_TRANSFORM = 500


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing on port {port}")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class Conn:
    """A minimal keep-alive HTTP/1.1 client connection: the load generator must cost far less than the server."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        status, data, _ = await self.request_traced(method, path, body, headers)
        return status, data

    async def request_traced(self, method: str, path: str, body: dict[str, Any] | None = None,
                             headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str | None]:
        """(status, JSON body, the gateway's `x-bench-t` stamp when it runs traced)."""
        try:
            return await self._request(method, path, body, headers)
        except (ConnectionError, asyncio.IncompleteReadError):  # the server closed an idle keep-alive: once more, anew
            self.writer = None
            return await self._request(method, path, body, headers)

    async def _request(self, method: str, path: str, body: dict[str, Any] | None,
                       headers: dict[str, str] | None) -> tuple[int, dict[str, Any], str | None]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        payload = json.dumps(body).encode() if body is not None else b""
        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(payload)}",
                "Content-Type: application/json"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        answer = await self.reader.readuntil(b"\r\n\r\n")
        status, length, stamp = parse_head(answer[:-4])
        data = await self.reader.readexactly(length)
        return status, json.loads(data) if data else {}, stamp


class Pool:
    def __init__(self, port: int, size: int) -> None:
        self.free: asyncio.Queue[Conn] = asyncio.Queue()
        for _ in range(size):
            self.free.put_nowait(Conn(port))

    async def request(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        status, data, _ = await self.request_traced(*args, **kwargs)
        return status, data

    async def request_traced(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, Any], str | None]:
        conn = await self.free.get()
        try:
            return await conn.request_traced(*args, **kwargs)
        finally:
            self.free.put_nowait(conn)


def lag_summary(samples: list[tuple[float, float]], start: float, end: float) -> dict[str, Any]:
    lags = [lag * 1000 for t, lag in samples if start <= t <= end]
    if not lags:
        return {}
    return {"ticks": len(lags), "p50_ms": round(pct(lags, 0.5), 3), "p99_ms": round(pct(lags, 0.99), 3),
            "max_ms": round(max(lags), 3), "over_2ms": sum(x > 2 for x in lags), "over_5ms": sum(x > 5 for x in lags)}


def pace(loop: asyncio.AbstractEventLoop, start: float, rate: float, n: int, launch: Callable[[int], None]) -> None:
    """Pacing thread: hands request i to the loop at `start + i / rate` (time.monotonic, the clock of loop.time()).

    time.sleep wakes within ~0.1 ms; the loop picks the call up at once when idle, or as soon as it is free (any
    such wait still counts, since latency is measured from the schedule).
    """
    for i in range(n):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        loop.call_soon_threadsafe(launch, i)


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value} ms"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def fill_backlog(pool: Pool) -> None:
    friend = {"X-API-Key": "friend-key"}
    sends = [pool.request("POST", "/generation/tasks", {"session_id": f"friend-{i}", "vram_mb": 8000,
                                                         "client_key": "batch", "gpus": ["gpu1"]}, friend)
             for i in range(BACKLOG_FRIEND + 1)]
    sends += [pool.request("POST", "/transform/tasks",
                           {"session_id": f"t-{i}", "task_type": "transform", "client_key": f"user{i % 50}"},
                           {"X-API-Key": f"user-key-{i % 5}"})
              for i in range(BACKLOG_TRANSFORM + 1)]
    results = await asyncio.gather(*sends)
    bad = [r for r in results if r[0] != 200]
    if bad:
        raise RuntimeError(f"backlog enqueue failed: {bad[:3]}")


def latency_stats(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(pct(values, 0.5), 3), "p90_ms": round(pct(values, 0.9), 3),
            "p99_ms": round(pct(values, 0.99), 3), "max_ms": round(max(values), 3),
            "mean_ms": round(statistics.fmean(values), 3)}


def lease_body(tag: str, i: int) -> dict[str, Any]:
    return {"model": "facebook/musicgen-small", "lane": "generation", "owner": "bench", "session_id": f"{tag}-{i}",
            "vram_mb": 1000, "client_key": f"c{i % 8}"}


class Recorder:
    """One timed run's samples (ms) and its summary, whichever client sent the requests."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.grant: list[float] = []
        self.from_send: list[float] = []
        self.release: list[float] = []
        self.errors: list[str] = []
        self.traced: list[tuple[float, dict[str, float]]] = []
        self.t0, self.wall0, self.cpu0 = time.monotonic(), time.time(), cpu_times()

    def granted(self, scheduled: float, sent: float, done: float, status: int, body: dict[str, Any],
                stamp: str | None) -> bool:
        if status != 200 or body.get("status") != "granted":
            self.errors.append(f"{status} {body.get('status')} {body.get('error', '')}"[:200])
            return False
        self.grant.append((done - scheduled) * 1000)
        self.from_send.append((done - sent) * 1000)
        parts = segments(scheduled, sent, done, stamp)
        if parts:
            self.traced.append((done - scheduled, parts))
        return True

    def released(self, seconds: float, status: int) -> None:
        self.release.append(seconds * 1000)
        if status != 200:
            self.errors.append(f"release {status}")

    def summary(self, client: str) -> dict[str, Any]:
        out: dict[str, Any] = {"requests": self.n, "errors": len(self.errors), "error_samples": self.errors[:5],
                               "achieved_rate": round(self.n / (time.monotonic() - self.t0), 1),
                               "window": [self.wall0, time.time()], "host_cpu": cpu_share(self.cpu0, cpu_times()),
                               "client": client}
        if self.traced:
            out["breakdown"] = breakdown(self.traced, pct)
        for name, values in (("grant", self.grant), ("grant_from_send", self.from_send), ("release", self.release)):
            if values:
                out[name] = latency_stats(values)
        return out


def parse_head(head: bytes) -> tuple[int, int, str | None]:
    """(status, Content-Length, the gateway's `x-bench-t` stamp when it runs traced) of a response head."""
    lines = head.decode().split("\r\n")
    status, length, stamp = int(lines[0].split()[1]), 0, None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.lower()
        if name == "content-length":
            length = int(value)
        elif name == "x-bench-t":
            stamp = value.strip()
    return status, length, stamp


class SyncConn:
    """A blocking keep-alive HTTP/1.1 connection for the timed runs: no event loop and no thread hand-off between
    the schedule and the send, so what the client adds to a grant is a socket write and a read."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        payload = json.dumps(body).encode()
        head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(payload)}",
                "Content-Type: application/json"] + [f"{k}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + payload)

    def receive(self) -> tuple[int, dict[str, Any], str | None]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status, length, stamp = parse_head(head)
        while len(self.buf) < length:
            self._fill()
        data, self.buf = self.buf[:length], self.buf[length:]
        return status, json.loads(data) if data else {}, stamp

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("gateway closed the connection")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def wait_until(t: float) -> None:
    """Sleep to ~0.3 ms before `t` (time.monotonic), then spin: sleeps wake late by the timer slack and more."""
    left = t - time.monotonic()
    if left > 0.0003:
        time.sleep(left - 0.0003)
    while time.monotonic() < t:
        pass


def run_rate_sync(port: int, rate: float, seconds: float) -> dict[str, Any]:
    """The timed run with `SyncConn`s: request i is sent at `start + i / rate` (spinning the last 0.3 ms), its grant
    released right after; a request that could not go on time (the previous round trip ran over) is sent at once
    and its lateness counts in its latency, as in an open-loop run."""
    grant_conn, release_conn = SyncConn(port), SyncConn(port)
    rec = Recorder(int(rate * seconds))
    key = {"X-API-Key": "bench-key"}
    start = time.monotonic() + 0.05
    try:
        for i in range(rec.n):
            scheduled = start + i / rate
            wait_until(scheduled)
            sent = time.monotonic()
            grant_conn.send("/leases", lease_body(f"s{rate:g}", i), key)
            status, body, stamp = grant_conn.receive()
            if not rec.granted(scheduled, sent, time.monotonic(), status, body, stamp):
                continue
            t = time.monotonic()
            release_conn.send(f"/leases/{body['lease_id']}/release", {"fencing_token": body["fencing_token"]}, key)
            status, _, _ = release_conn.receive()
            rec.released(time.monotonic() - t, status)
    finally:
        grant_conn.close()
        release_conn.close()
    return rec.summary("sync")


async def run_rate(pool: Pool, rate: float, seconds: float) -> dict[str, Any]:
    """The timed run from the asyncio pool, each request handed to the loop on schedule by a pacing thread."""
    loop = asyncio.get_running_loop()
    rec = Recorder(int(rate * seconds))
    key = {"X-API-Key": "bench-key"}
    start = loop.time() + 0.05

    async def one(i: int) -> None:
        scheduled = start + i / rate
        sent = loop.time()
        status, body, stamp = await pool.request_traced("POST", "/leases", lease_body(f"b{rate:g}", i), key)
        if not rec.granted(scheduled, sent, loop.time(), status, body, stamp):
            return
        t = loop.time()
        status, _ = await pool.request("POST", f"/leases/{body['lease_id']}/release",
                                       {"fencing_token": body["fencing_token"]}, key)
        rec.released(loop.time() - t, status)

    tasks: list[asyncio.Task[None]] = []
    launched = asyncio.Event()

    def launch(i: int) -> None:
        tasks.append(loop.create_task(one(i)))
        if len(tasks) == rec.n:
            launched.set()

    threading.Thread(target=pace, args=(loop, start, rate, rec.n, launch), daemon=True).start()
    await launched.wait()
    await asyncio.gather(*tasks)
    return rec.summary("asyncio")


async def run_serial(conn: Conn, n: int) -> dict[str, Any]:
    """One request at a time: the gateway's own cost per grant, without queueing behind other requests."""
    loop = asyncio.get_running_loop()
    grant_ms: list[float] = []
    key = {"X-API-Key": "bench-key"}
    for i in range(n):
        t = loop.time()
        status, body = await conn.request("POST", "/leases", {"model": "facebook/musicgen-small", "lane": "generation",
                                                              "owner": "bench", "session_id": f"serial-{i}",
                                                              "vram_mb": 1000}, key)
        grant_ms.append((loop.time() - t) * 1000)
        assert status == 200 and body["status"] == "granted", body
        await conn.request("POST", f"/leases/{body['lease_id']}/release", {"fencing_token": body["fencing_token"]}, key)
    return {"requests": n, "errors": 0, "achieved_rate": None,
            "grant": latency_stats(grant_ms)}


async def bench(port: int, rates: list[float], seconds: float, probe: LoopProbe | None,
                floor: bool = False, redis_port: int | None = None, client: str = "sync") -> dict[str, Any]:
    if probe:
        probe.start()
    pool = Pool(port, 64)
    queued: dict[str, int] = {}
    if not floor:
        await fill_backlog(pool)
        _, snapshot = await pool.request("GET", "/queue", None, {"X-API-Key": "bench-key"})
        queued = {lane: info["queued"] for lane, info in snapshot["lanes"].items() if info["queued"]}
    await run_rate(pool, 100, 2)  # warm-up: connections, script cache, caches
    # the load generator's own collections are not the gateway's latency: none while timing
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        runs: dict[str, Any] = {}
        for rate in rates:
            if redis_port:
                redis_watch_start(redis_port)
            if client == "sync":  # blocks this loop on purpose: nothing else runs in the client meanwhile
                runs[f"{rate:g}"] = run_rate_sync(port, rate, seconds)
            else:
                runs[f"{rate:g}"] = await run_rate(pool, rate, seconds)
            if redis_port:
                runs[f"{rate:g}"]["redis_side"] = redis_watch_read(redis_port)
        runs["serial"] = await run_serial(Conn(port), 1000)
    finally:
        gc.enable()
        gc.unfreeze()
    after: dict[str, int] = {}
    if not floor:
        _, snap = await pool.request("GET", "/queue", None, {"X-API-Key": "bench-key"})
        after = {k: v["queued"] for k, v in snap["lanes"].items() if v["queued"]}
    return {"queued_during_run": queued, "queued_after": after, "runs": runs}


def parse_cpus(spec: str | None) -> dict[str, set[int]]:
    """`client=15,gateway=13,redis=14` (a role may list several: `gateway=12+13`) -> CPU sets per role."""
    out: dict[str, set[int]] = {}
    for part in (spec or "").split(","):
        if part.strip():
            role, _, cpus = part.partition("=")
            out[role.strip()] = {int(c) for c in cpus.split("+")}
    return out


def pin(pid: int, role: str, cpus: dict[str, set[int]]) -> None:
    if role in cpus:
        os.sched_setaffinity(pid, cpus[role])


def run_config(exe: str, aof: bool, rates: list[float], seconds: float, *, probe: bool = False, trace: bool = False,
               cpus: dict[str, set[int]] | None = None, client: str = "sync") -> dict[str, Any]:
    """Fresh redis-server + one gateway process, backlog, then the timed runs (`probe`: with `LoopProbe`s; `trace`:
    the gateway stamps its answers, see queue_trace.py; `cpus`: processes pinned per role)."""
    cpus = cpus or {}
    with tempfile.TemporaryDirectory() as tmp:
        rport, gport = free_port(), free_port()
        persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if aof else ["--appendonly", "no"]
        redis_proc = subprocess.Popen([exe, "--port", str(rport), "--bind", "127.0.0.1", "--dir", tmp, "--save", "",
                                       *persistence], stdout=subprocess.DEVNULL)
        pin(redis_proc.pid, "redis", cpus)
        wait_port(rport)
        env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{rport}/0", "QUEUE_GPUS": "gpu0=80000,gpu1=8000",
               "API_KEYS": "bench-key,friend-key," + ",".join(f"user-key-{i}" for i in range(5)),
               "QUEUE_KEY_MAX_ACTIVE": "0", "QUEUE_KEY_MAX_QUEUED": "1000", "QUEUE_MAX_QUEUED": "5000",
               "QUEUE_POLL_TTL_SECONDS": "3600", "QUEUE_LEASE_TTL_SECONDS": "3600", "LOG_LEVEL": "WARNING",
               "GARY_URL": ""}
        probe_file = Path(tmp) / "gateway_probe.json"
        flags = [f for f, on in (("probe", probe), ("trace", trace)) if on]
        launch = [__file__, "--serve-gateway", ",".join(flags)] if flags else ["-m", "gpuqueue.cli"]
        gw = subprocess.Popen([sys.executable, *launch, "--host", "127.0.0.1", "--port", str(gport)],
                              env={**env, "QUEUE_BENCH_PROBE": str(probe_file)})
        pin(gw.pid, "gateway", cpus)
        client_probe = LoopProbe() if probe and client == "asyncio" else None
        try:
            wait_port(gport)
            load_before = os.getloadavg()
            out = asyncio.run(bench(gport, rates, seconds, client_probe, redis_port=rport if trace else None,
                                    client=client))
            load_after = os.getloadavg()
        finally:
            gw.terminate()
            gw.wait(20)
            redis_proc.terminate()
            redis_proc.wait(10)
        if probe:
            gateway_samples = json.loads(probe_file.read_text())
            for r in out["runs"].values():
                if "window" in r:
                    r["loop_lag"] = {"gateway": lag_summary(gateway_samples, *r["window"]),
                                     "client": lag_summary(client_probe.samples if client_probe else [], *r["window"])}
    label = ("AOF, fsync every second" if aof else "none") + "".join(f" ({f})" for f in flags)
    if client != "sync":
        label += f" ({client} client)"
    if cpus:
        label += " (pinned " + " ".join(f"{role}={'+'.join(map(str, sorted(c)))}" for role, c in cpus.items()) + ")"
    return {"redis_persistence": label, **out,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after]}


def run_floor(rates: list[float], seconds: float, cpus: dict[str, set[int]], client: str = "sync") -> dict[str, Any]:
    """The control: the same client against a canned-answer server (queue_trace.serve_floor), no Redis."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-floor", str(port)])
    pin(proc.pid, "gateway", cpus)
    try:
        wait_port(port)
        load_before = os.getloadavg()
        out = asyncio.run(bench(port, rates, seconds, None, floor=True, client=client))
    finally:
        proc.terminate()
        proc.wait(10)
    label = "floor: canned-answer server, no gateway, no Redis" + ("" if client == "sync" else f" ({client} client)")
    return {"redis_persistence": label, **out,
            "load_average_before": [round(x, 2) for x in load_before], "load_average_after": []}


def lag_rows(configs: dict[str, Any]) -> list[str]:
    rows = []
    for config in configs.values():
        for rate, r in config["runs"].items():
            for side, lag in r.get("loop_lag", {}).items():
                if lag:
                    rows.append(f"| {side} | {rate} | {lag['ticks']} | {lag['p50_ms']} ms | {lag['p99_ms']} ms | "
                                f"{lag['max_ms']} ms | {lag['over_2ms']} | {lag['over_5ms']} |")
    if not rows:
        return []
    return ["Event-loop stalls (`--probe-loops`, config without persistence): how late a 1 ms ticker fired.", "",
            "| loop | rate (req/s) | ticks | late p50 | late p99 | late max | ticks > 2 ms late | > 5 ms |",
            "|---|---|---|---|---|---|---|---|", *rows, ""]


def breakdown_rows(configs: dict[str, Any]) -> list[str]:
    rows = []
    for config in configs.values():
        for rate, r in config["runs"].items():
            b = r.get("breakdown")
            if b:
                cells = " | ".join(f"{b['all'][seg]['p50_ms']} / {b['all'][seg]['p99_ms']} / "
                                   f"{b['slowest_1pct_mean'][seg]}" for seg in SEGMENTS)
                side = r.get("redis_side", {})
                rows.append(f"| {config['redis_persistence']} | {rate} | {cells} | {b['slowest_1pct_total_ms']} | "
                            f"{r.get('host_cpu', {}).get('steal_pct', '-')} | "
                            f"{ {k[8:]: v['usec_per_call'] for k, v in side.get('scripts', {}).items()} } | "
                            f"{side.get('slow_count', '-')} (max {side.get('slow_max_us', '-')} us) |")
    if not rows:
        return []
    return ["Where grants spent their time (`--trace`), ms: p50 / p99 / mean over the slowest 1%. client_lag: schedule "
            "to send; to_gateway: send to the gateway's first read; in_uvicorn: read to the app; handler: the app "
            "minus Redis; redis: awaiting scripts; back_to_client: answer to the client having it.", "",
            "| redis | rate | " + " | ".join(SEGMENTS) + " | slowest 1% total | steal % | script us/call in redis "
            "| commands > 250 us |", "|---|---|" + "---|" * (len(SEGMENTS) + 4), *rows, ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, action="append", help="requests/s (repeatable; default 200)")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--baseline", type=Path, help="an earlier queue.json (e.g. from another commit, run on the same "
                        "machine just before) whose rows the table keeps for comparison")
    parser.add_argument("--probe-loops", action="store_true", help="measure event-loop stalls in the config without "
                        "persistence (a 1 ms ticker in the gateway and the client; see the module docstring)")
    parser.add_argument("--baseline-label", default="before", help="what the baseline rows were measured on")
    parser.add_argument("--trace", action="store_true", help="the gateway stamps each answer; the results gain a "
                        "per-segment breakdown of where grants spent their time (queue_trace.py)")
    parser.add_argument("--floor", action="store_true", help="also run the same client against a canned-answer "
                        "server: the host's own floor for this round trip (queue_trace.serve_floor)")
    parser.add_argument("--cpus", help="pin processes per role, e.g. client=15,gateway=13,redis=14")
    parser.add_argument("--client", choices=("sync", "asyncio"), default="sync", help="timed runs from blocking "
                        "sockets on schedule (default), or from the asyncio pool paced by a thread (the earlier client)")
    parser.add_argument("--out", default="queue", help="results file stem under bench/results (diagnosis runs "
                        "should not overwrite queue.json)")
    if sys.argv[1:2] == ["--serve-gateway"]:
        flags = sys.argv[2].split(",")
        return serve_gateway(sys.argv[3:], probe="probe" in flags, trace="trace" in flags)
    if sys.argv[1:2] == ["--serve-floor"]:
        return serve_floor(int(sys.argv[2]))
    args = parser.parse_args()
    cpus = parse_cpus(args.cpus)
    pin(0, "client", cpus)
    rates = args.rate or [200.0]
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not found")
    redis_version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    configs: dict[str, Any] = {}
    if args.floor:
        configs["floor"] = run_floor(rates, args.seconds, cpus, args.client)
    # as deployed (Dockerfile.redis), then without persistence (isolates fsync stalls)
    configs["aof_everysec"] = run_config(exe, True, rates, args.seconds, trace=args.trace, cpus=cpus, client=args.client)
    configs["no_persistence"] = run_config(exe, False, rates, args.seconds, probe=args.probe_loops, trace=args.trace,
                                           cpus=cpus, client=args.client)
    result = {
        "benchmark": "gpuqueue lease grant round trip (POST /leases -> granted), loopback, open-loop fixed rate",
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "python": platform.python_version(), "redis": redis_version,
        "seconds_per_rate": args.seconds, "goal": "p99 <= 2 ms at 200 req/s with 1,000 queued tasks",
        "configs": configs,
    }
    if args.baseline:
        old = json.loads(args.baseline.read_text())
        result["baseline"] = {"label": args.baseline_label, "configs": old["configs"]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = ["| redis | rate (req/s) | achieved | grant p50 | grant p90 | grant p99 | max | release p50 | release p99 | "
            "errors | load avg (1 min) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    tables = [("", configs)]
    if "baseline" in result:
        tables.insert(0, (f"{result['baseline']['label']}: ", result["baseline"]["configs"]))
    for label, table in tables:
        for config in table.values():
            for rate, r in config["runs"].items():
                g, rel = r.get("grant", {}), r.get("release", {})
                rows.append(f"| {label}{config['redis_persistence']} | {rate} | {r['achieved_rate'] or '-'} | "
                            f"{g.get('p50_ms')} ms | {g.get('p90_ms')} ms | {g.get('p99_ms')} ms | {g.get('max_ms')} ms | "
                            f"{ms(rel.get('p50_ms'))} | {ms(rel.get('p99_ms'))} | {r['errors']} | "
                            f"{config['load_average_before'][0]} |")
    first = configs["aof_everysec"]
    md = [
        "# GPU queue gateway: lease grant round trip",
        "",
        f"CPU: {result['cpu']} ({result['cpu_count']} cores, shared with other jobs), Python {result['python']}, "
        f"{redis_version}.",
        f"Backlog while measuring: {first['queued_during_run']} queued tasks (a friend's batch of 500 pinned to a busy "
        "second GPU; 500 transforms from 50 users behind the one-at-a-time lane).",
        "One gateway process (uvicorn + uvloop, hiredis), one redis-server, loopback; requests sent open-loop on a "
        "fixed schedule, latency from the scheduled send time; each grant released right after (releases are extra "
        "load, not counted in the grant numbers). `serial`: one request at a time (the gateway's own cost).",
        "",
        *rows,
        "",
        *lag_rows(configs),
        *breakdown_rows(configs),
        f"Goal: {result['goal']}. Re-run: `.venv/bin/python bench/queue_bench.py`.",
    ]
    (RESULTS / f"{args.out}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
