"""MusicGen benchmark: our engine (CUDA graph fast path) vs audiocraft 1.3.0 `generate_continuation`, same GPU, same run.

Workload (gary's): 6 s prompt -> 30 s total output, top_k 250, temperature 1, cfg_coef 3, one text description per
clip, batch 1 / 4 / 8, random-init weights of the real musicgen small / medium / large sizes (configs in
`gary.musicgen.demo.lm_xp_cfg` / `compression_xp_cfg`, written from audiocraft's Hydra configs). The LM weights are
created once by audiocraft's builder and shared by both engines; T5 is a tiny 768-d stand-in for both (text encoding
runs once per request and is not what is measured). audiocraft runs a short continuation (its per-step figure,
extrapolated to the full 30 s); ours runs the full workload.

Run on the GPU machine from the repo root:  python3 bench/musicgen_bench.py --out $OUT
with `.whl-musicgen/site` and `.whl-musicgen/site312` carried. The GPU machine has torch/transformers but not
audiocraft's import-time needs; they travel as (made here, from the repo root):
  site:    the pure-python packages copied from .venv's site-packages: audiocraft omegaconf antlr4 julius hydra
           num2words docopt.py flashy dora submitit treetable retrying.py cloudpickle colorlog pydantic
           pydantic_settings dotenv typing_inspection annotated_types soundfile.py _soundfile.py _soundfile_data einops
           pycparser
  site312: cp312 wheels of the compiled ones, unzipped:  pip download --only-binary=:all: --python-version 3.12
           --platform manylinux2014_x86_64 --no-deps pydantic_core==<venv's> cffi==<venv's>
Optional audiocraft imports that MusicGen never calls (spacy, librosa, av, torchmetrics, wandb) get inert
stand-ins when missing; xformers gets tests.gary_musicgen.reference's stand-in.

Each of our timed figures comes twice: `first` is the first 30 s generation of its batch shape (graph capture
included; torch.compile already warmed by a short run of the same batch size), `resident` the next one (the shape's
graph and buffers resident, as for a server's repeated requests). `--variants legacy fused_no_compile
compile_whole_step` also times, on the first size and in the same process, the earlier design (SDPA per KV bucket, a
graph per bucket), the fused step without torch.compile, and the fused step compiled as one unit. `replay_ms` is one
graph replay at the full 30 s length, timed by CUDA events (the step alone);
`kernels_per_step` counts the GPU kernels one step launches (profiled outside the graph).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import json
import sys
import time
import types
from pathlib import Path
from typing import Any

from checkout import use_checkout  # bench/ is the script's folder, first on sys.path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"small": (1024, 16, 24), "medium": (1536, 24, 48), "large": (2048, 32, 48)}
PROMPT_S, DURATION_S, SHORT_S = 6.0, 30.0, 7.0
# FastDecoder options of the variants --variants can time beside the default (fused attention, per-layer compile)
VARIANTS: dict[str, dict[str, Any]] = {"legacy": {"fused_attention": False}, "fused_no_compile": {"compile": False},
                                       "compile_whole_step": {"scope": "step"}}
DESCRIPTION = "lofi hip hop beat with warm rhodes keys and dusty drums"
# Optional audiocraft imports that MusicGen inference never calls (tokenisers, chroma, metrics, trackers, file I/O).
OPTIONAL = ["spacy", "librosa", "av", "torchmetrics", "wandb"]


def bootstrap(carried: bool = True) -> None:
    """Import paths for a raw checkout: carried site folders (the GPU machine's Python), and the repo's package folders."""
    for extra in (ROOT / ".whl-musicgen" / "site312", ROOT / ".whl-musicgen" / "site"):
        if carried and extra.is_dir():
            sys.path.insert(0, str(extra))
    use_checkout()
    # transformers caches which optional packages exist: settle that before any stand-in is registered
    from transformers import AutoTokenizer, T5Config, T5EncoderModel, T5TokenizerFast  # noqa: F401

    for name in OPTIONAL:
        try:
            importlib.import_module(name)
        except ImportError:
            stub = _Absent(name)
            stub.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec() callers need one
            sys.modules[name] = stub


class _Absent(types.ModuleType):
    """Stand-in for an optional dependency: any attribute is a dummy class; using it raises."""

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)

        class Dummy:
            def __init__(self, *a: Any, **k: Any) -> None:
                raise RuntimeError(f"{self.__class__.__module__} is not installed")

        Dummy.__module__ = self.__name__
        return Dummy


def build(size: str, t5_root: Path, settings: Any, device: Any) -> tuple[Any, Any]:
    """audiocraft's MusicGen and ours, sharing one set of random fp16 LM weights."""
    import torch
    from omegaconf import OmegaConf

    from gary.musicgen.checkpoint import compression_config, lm_config
    from gary.musicgen.conditioning import TextConditioner
    from gary.musicgen.demo import compression_xp_cfg, lm_xp_cfg
    from gary.musicgen.encodec import build_compression
    from gary.musicgen.fastpath import FastDecoder
    from gary.musicgen.lm import build_lm
    from gary.musicgen.model import MusicGenModel
    from garycommon.textenc import load_t5
    from tests.gary_musicgen.reference import route_t5

    route_t5(settings)
    from audiocraft.models import builders
    from audiocraft.models.musicgen import MusicGen

    dim, heads, layers = SIZES[size]
    lm_cfg = lm_xp_cfg(dim=dim, num_heads=heads, num_layers=layers)
    comp_cfg = compression_xp_cfg(n_filters=64, dimension=128, lstm=2)
    ac_lm_cfg = OmegaConf.create(lm_cfg)
    ac_lm_cfg.device, ac_lm_cfg.dtype = "cuda", "float16"
    torch.manual_seed(0)
    ref_lm = builders.get_lm_model(ac_lm_cfg).eval()
    ref_lm.cfg = ac_lm_cfg
    ac_comp_cfg = OmegaConf.create(comp_cfg)
    ac_comp_cfg.device = "cuda"
    ref_codec = builders.get_compression_model(ac_comp_cfg).eval()
    with torch.no_grad():
        for layer in ref_codec.quantizer.vq.layers:  # kmeans-initialised codebooks start at zero: randomise
            layer._codebook.embed.normal_()
    ref = MusicGen(f"audiocraft-{size}", ref_codec, ref_lm)

    parsed = lm_config(OmegaConf.to_container(ac_lm_cfg, resolve=True))
    lm, cond_state = build_lm(parsed, dict(ref_lm.state_dict()))
    codec = build_compression(compression_config(OmegaConf.to_container(ac_comp_cfg, resolve=True)),
                              {k: v.float() for k, v in ref_codec.state_dict().items()},
                              stereo_interleaved=False, n_q=None).to(device)
    tokenizer, t5 = load_t5(str(t5_root / "t5-base"), settings, device, torch.float32)
    text = TextConditioner(tokenizer, t5, cond_state, dim).to(device)
    ours = MusicGenModel(f"ours-{size}", lm.to(device, torch.float16), codec, text, device, torch.float16)
    ours.fast = FastDecoder(ours)
    return ref, ours


def run_ours(ours: Any, batch: int, duration: float, seed: int) -> dict[str, Any]:
    import torch

    from gary.musicgen.types import GenerationRequest

    gen = torch.Generator().manual_seed(seed)
    reqs = [GenerationRequest("bench", 0.1 * torch.randn(1, int(PROMPT_S * 32000), generator=gen), 32000,
                              duration=duration, description=DESCRIPTION, seed=seed + i) for i in range(batch)]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = ours.generate(reqs)
    torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    steps = int(duration * 50) + 3 - int(PROMPT_S * 50)
    assert all(r.audio.shape == (1, int(duration * 50) * 640) and torch.isfinite(r.audio).all() for r in out)
    return {"seconds": round(secs, 3), "steps": steps, "steps_per_s": round(steps / secs, 1),
            "ms_per_step": round(1000 * secs / steps, 3), "realtime_factor": round(duration * batch / secs, 2),
            "peak_vram_mb": round(torch.cuda.max_memory_allocated() / 2**20)}


def step_figures(ours: Any) -> dict[str, Any]:
    """One graph replay of the most recent batch shape (CUDA events, median of 50) and the kernels one step launches."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    dec = ours.fast
    slot = next(reversed(dec._slots.values()))
    key = max(slot.graphs, key=lambda k: -1 if k is None else k)
    graph = slot.graphs[key]
    times = []
    for _ in range(60):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times = sorted(times[10:])
    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        dec._run_step(slot.state, key)
        torch.cuda.synchronize()
    kernels = sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)
    return {"replay_ms": round(times[len(times) // 2], 4), "kernels_per_step": kernels}


def time_ours(ours: Any, batches: list[int], log: Any) -> dict[str, Any]:
    """Per batch size: a short warm-up (compiles), then two full runs (first of the shape, then resident)."""
    out: dict[str, Any] = {}
    for b in batches:
        t0 = time.perf_counter()
        run_ours(ours, b, SHORT_S, seed=99)
        warm = round(time.perf_counter() - t0, 2)
        first = run_ours(ours, b, DURATION_S, seed=b)
        resident = run_ours(ours, b, DURATION_S, seed=b + 100)
        out[f"batch{b}"] = {"first": first, "resident": resident, "warmup_s": warm, **step_figures(ours)}
        log(b, out[f"batch{b}"])
    return out


def run_audiocraft(ref: Any, batch: int, seed: int) -> dict[str, Any]:
    """Short continuation (SHORT_S total); per-step time from its progress callback, extrapolated to 30 s."""
    import torch

    stamps: list[tuple[int, float]] = []
    ref.set_generation_params(use_sampling=True, top_k=250, top_p=0.0, temperature=1.0, duration=SHORT_S,
                              cfg_coef=3.0)
    ref.set_custom_progress_callback(lambda step, total: stamps.append((step, time.perf_counter())))
    gen = torch.Generator().manual_seed(seed)
    prompt = 0.1 * torch.randn(batch, 1, int(PROMPT_S * 32000), generator=gen)
    torch.manual_seed(seed)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with torch.no_grad():
        audio = ref.generate_continuation(prompt.cuda(), 32000, [DESCRIPTION] * batch, progress=True)
    torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    (s0, t_a), (s1, t_b) = stamps[5], stamps[-1]
    per_step = (t_b - t_a) / (s1 - s0)
    short_steps = int(SHORT_S * 50) + 3 - int(PROMPT_S * 50)
    full_steps = int(DURATION_S * 50) + 3 - int(PROMPT_S * 50)
    full = secs + (full_steps - short_steps) * per_step
    assert audio.shape == (batch, 1, int(SHORT_S * 50) * 640)
    return {"short_run_seconds": round(secs, 3), "short_run_steps": short_steps, "ms_per_step": round(1000 * per_step, 2),
            "steps_per_s": round(1 / per_step, 1), "seconds_30s_estimated": round(full, 1),
            "realtime_factor_estimated": round(DURATION_S * batch / full, 3),
            "peak_vram_mb": round(torch.cuda.max_memory_allocated() / 2**20)}


def check_fast_equals_eager(work: Path, device: Any) -> dict[str, Any]:
    """Through MusicGenEngine (demo mode, fp32): graph-replayed decode == the eager loop's tokens for the fused
    compiled step (the engine's default) and the legacy one, twice each (the second replays a resident slot); and a
    batched engine.generate with progress works end to end on the GPU."""
    import torch

    from gary.catalog import AllowedModels
    from gary.musicgen import MusicGenEngine
    from gary.musicgen.fastpath import FastDecoder
    from gary.musicgen.generate import generate_eager
    from gary.musicgen.types import GenerationRequest
    from garycommon.settings import Settings

    settings = Settings(local_models_dir=work, demo_models=True, device="cuda")
    engine = MusicGenEngine(settings, device, dtype=torch.float32, source=AllowedModels(settings))
    name = "thepatch/hoenn_lofi"
    model = engine.model(name)
    reqs = [GenerationRequest(name, 0.1 * torch.randn(1, 32000 * p), 32000, duration=d, description=desc, seed=s)
            for p, d, desc, s in ((2, 12.0, "warm keys", 1), (1, 8.0, None, 2), (3, 12.0, "a longer text here", 3))]
    jobs = [model.to_job(r)[0] for r in reqs]
    eager = generate_eager(model.lm, jobs, torch.float32, model.keys)
    result: dict[str, Any] = {}
    for label, dec in (("fused_compiled", model.fast), ("legacy", FastDecoder(model, fused_attention=False))):
        for run in ("first", "resident"):
            t0 = time.perf_counter()
            try:
                fast = dec.generate(jobs)
                same = all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(eager, fast, strict=True))
            except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
                same = f"error: {exc!r}"[:500]
            result[f"{label}_{run}_equals_eager"] = same
            result[f"{label}_{run}_s"] = round(time.perf_counter() - t0, 2)
    seen: list[tuple[int, int]] = []
    try:
        out = engine.generate(reqs, lambda step, total: seen.append((step, total)))
        result.update({"engine_shapes": [list(r.audio.shape) for r in out], "progress_reports": len(seen),
                       "last_progress": seen[-1] if seen else None})
    except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
        result["engine_error"] = repr(exc)[:1000]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--name", default="musicgen", help="file stem of the results")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--ref-batches", nargs="+", type=int, default=[1])
    parser.add_argument("--variants", nargs="*", default=[], choices=sorted(VARIANTS),
                        help="other decoders to time on the first size, in the same process")
    parser.add_argument("--budget-s", type=float, default=480.0, help="skip remaining audiocraft runs after this")
    args = parser.parse_args()
    bootstrap()
    import torch
    import triton

    from gary.musicgen.fastpath import FastDecoder
    from garycommon.settings import Settings
    from garycommon.textenc import write_tiny_t5

    started = time.perf_counter()
    device = torch.device("cuda")
    work = Path("/tmp/musicgen-bench")
    write_tiny_t5(work / "t5-base")
    settings = Settings(local_models_dir=work, device="cuda")
    results: dict[str, Any] = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                               "triton": triton.__version__,
                               "workload": {"prompt_s": PROMPT_S, "duration_s": DURATION_S, "top_k": 250,
                                            "cfg_coef": 3.0, "description": True},
                               "check": check_fast_equals_eager(work, device), "sizes": {}}
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=2))

    save()
    print(json.dumps(results["check"]), flush=True)
    for n, size in enumerate(args.sizes):
        ref, ours = build(size, work, settings, device)
        entry: dict[str, Any] = {"ours": {}, "audiocraft": {}}
        results["sizes"][size] = entry
        entry["warmup_at_load_s"] = round(ours.fast.warmup(), 2)  # what MusicGenEngine does when it loads a model
        print(size, "warm-up at load", entry["warmup_at_load_s"], flush=True)
        try:
            entry["ours"] = time_ours(ours, args.batches, lambda b, r, sz=size: print(sz, "ours", b, r, flush=True))
        except Exception as exc:  # noqa: BLE001 - recorded; the uncompiled fused step is timed instead
            entry["ours_error"] = repr(exc)[:2000]
            print(size, "compiled step failed:", repr(exc)[:2000], flush=True)
            ours.fast = FastDecoder(ours, compile=False)
            entry["ours"] = time_ours(ours, args.batches, lambda b, r, sz=size: print(sz, "ours-nocompile", b, r, flush=True))
            entry["ours_compiled"] = False
        save()
        if args.variants and n == 0:
            entry["variants"] = {}
            for label in args.variants:
                ours.fast = FastDecoder(ours, **VARIANTS[label])
                entry["variants"][label] = time_ours(ours, [1, 8],
                                                     lambda b, r, lb=label, sz=size: print(sz, lb, b, r, flush=True))
                save()
            ours.fast = FastDecoder(ours)
        for b in args.ref_batches:
            if time.perf_counter() - started > args.budget_s:
                entry["audiocraft"][f"batch{b}"] = "skipped (time budget)"
                continue
            entry["audiocraft"][f"batch{b}"] = run_audiocraft(ref, b, seed=b)
            print(size, "audiocraft", b, entry["audiocraft"][f"batch{b}"], flush=True)
            save()
        del ref, ours
        torch.cuda.empty_cache()
    results["wall_s"] = round(time.perf_counter() - started, 1)
    save()


if __name__ == "__main__":
    main()
