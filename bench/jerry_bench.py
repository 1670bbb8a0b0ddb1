"""jerry engine benchmark: our SAO-small engine vs stable-audio-tools 0.0.19 in the same run, same random weights.

Random weights of SAO-small's real size (config: tests/jerry_sao/sao_small_model_config.json) plus a random T5
with T5-base's dimensions; 12 s (the full 524288-sample window) at 8 pingpong steps, batch 1 and 8. Every timed call
starts from the prompt strings (T5 encoding included) and ends with float32 audio on the host (VAE decode included).

    python3 bench/jerry_bench.py --out /tmp/out            # GPU: writes jerry.json + jerry.md to --out
    python3 bench/jerry_bench.py --out /tmp/out --tiny     # CPU smoke run of the same code on a tiny model
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.machinery
import json
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from checkout import use_checkout  # bench/ is the script's folder, first on sys.path
from timing import run_seconds

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "jerry_sao")]

PROMPTS = ["dark techno 128bpm", "lo-fi hip hop piano 90bpm", "ambient pad with vinyl crackle", "funk bass 110bpm",
           "jungle breaks 170bpm", "acoustic guitar folk", "808 trap drums 140bpm", "orchestral strings swell"]
SECONDS = 12.0
STEPS = 8
# stable-audio-tools imports k-diffusion (and its scipy/CLIP/FID stack) for samplers the rf path never calls; any
# such module the device machine lacks is replaced by an empty stub (the timed code paths never touch them).
STUBBED: set[str] = set()


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.machinery.ModuleSpec(name, self) if name.split(".")[0] in STUBBED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return types.ModuleType(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__path__ = []  # type: ignore[attr-defined]


def _import_stock() -> Callable[..., Any]:
    sys.meta_path.append(_StubFinder())
    for _ in range(10):
        try:
            from stable_audio_tools.inference.generation import generate_diffusion_cond
            from stable_audio_tools.models.factory import create_model_from_config  # noqa: F401
        except ModuleNotFoundError as exc:
            if not exc.name or exc.name.startswith("stable_audio_tools"):
                raise
            print(f"stub for missing module {exc.name}", flush=True)
            STUBBED.add(exc.name.split(".")[0])
            for mod in [m for m in sys.modules if m.startswith("stable_audio_tools")]:
                del sys.modules[mod]
        else:
            return generate_diffusion_cond
    raise RuntimeError("stable-audio-tools could not be imported")


def timed(fn: Callable[[], Any], reps: int, device: torch.device) -> dict[str, float]:
    times = [seconds * 1000 for seconds in run_seconds(fn, device, reps)]
    return {"median_ms": statistics.median(times), "min_ms": min(times), "reps": reps}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def main() -> None:  # noqa: PLR0915 - one linear script on purpose: it runs inside a single device lease
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tiny", action="store_true", help="tiny model on CPU: checks the script, not the speed")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--stock-reps", type=int, default=3)
    ap.add_argument("--skip-stock", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    use_checkout()
    from safetensors.torch import save_file

    from garycommon.settings import Settings
    from garycommon.textenc import write_tiny_t5
    from jerry.sao import SAOEngine, SAORequest
    from jerry.sao.demo import random_state_dict, tiny_config

    device = torch.device("cpu" if args.tiny else "cuda")
    results: dict[str, Any] = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                               "torch": torch.__version__, "seconds": SECONDS, "steps": STEPS, "sampler": "pingpong"}

    def save() -> None:
        (args.out / "jerry.json").write_text(json.dumps(results, indent=2))

    work = Path(tempfile.mkdtemp())
    if args.tiny:
        config = tiny_config(sample_size=2048 * 16)
        write_tiny_t5(work / "t5-base")
    else:
        config = json.loads((ROOT / "tests/jerry_sao/sao_small_model_config.json").read_text())
        write_tiny_t5(work / "t5-base", d_model=768, d_kv=64, num_heads=12, d_ff=3072, num_layers=12)
    t0 = time.perf_counter()
    state = random_state_dict(config, seed=0)
    (work / "sao").mkdir()
    save_file(state, str(work / "sao" / "model.safetensors"))
    (work / "sao" / "model_config.json").write_text(json.dumps(config))
    results["params_dit_vae_M"] = round(sum(v.numel() for k, v in state.items()
                                            if not k.endswith(("norm.beta", ".inv_freq"))) / 1e6, 1)
    print(f"weights written in {time.perf_counter() - t0:.1f}s ({results['params_dit_vae_M']} M)", flush=True)
    settings = Settings(local_models_dir=work, device=str(device))
    sample_size = config["sample_size"]
    reps = 2 if args.tiny else args.reps

    def requests(batch: int, seed0: int) -> list[SAORequest]:
        return [SAORequest(prompt=PROMPTS[i % len(PROMPTS)], seconds_total=SECONDS, steps=STEPS, seed=seed0 + i)
                for i in range(batch)]

    # ---- ours, fast path
    t0 = time.perf_counter()
    fast = SAOEngine.load(str(work / "sao"), settings, device)
    fast.warmup()
    for batch in (1, 8):
        fast.generate(requests(batch, 100))  # captures this batch size's graphs
    results["ours_warmup_s"] = round(time.perf_counter() - t0, 1)
    print(f"ours: loaded and warmed up in {results['ours_warmup_s']}s ({fast.net.model.model.preprocess_conv.weight.dtype})",
          flush=True)
    ours_audio = {}
    for batch in (1, 8):
        counter = iter(range(10**6))
        t = timed(lambda b=batch, c=counter: fast.generate(requests(b, 1000 + 10 * next(c))), reps, device)
        t["per_clip_ms"] = t["median_ms"] / batch
        results[f"ours_b{batch}"] = t
        print(f"ours b{batch}: {t['median_ms']:.1f} ms/call, {t['per_clip_ms']:.1f} ms/clip", flush=True)
        ours_audio[batch] = [r.audio for r in fast.generate(requests(batch, 7))]
        save()
    assert all(torch.isfinite(a).all() for a in ours_audio[8]), "non-finite audio from the fast path"
    results["batch_invariance_rel_err"] = rel_err(ours_audio[8][0], ours_audio[1][0])

    # breakdown at batch 1 / 8: text, sampler, decode
    for batch in (1, 8):
        prompts = [PROMPTS[i] for i in range(batch)]
        lat = torch.randn(batch, config["model"]["io_channels"], sample_size // 2048, device=device)
        results[f"ours_b{batch}_text_ms"] = timed(lambda p=prompts: fast._conditioning(p, [SECONDS] * len(p)), reps,
                                                  device)["median_ms"]
        results[f"ours_b{batch}_decode_ms"] = timed(lambda x=lat: fast.decode_fn(x), reps, device)["median_ms"]
        cross, glob = fast._conditioning(prompts, [SECONDS] * batch)
        tt = torch.ones(batch, device=device)
        results[f"ours_b{batch}_dit_step_ms"] = timed(lambda x=lat, c=cross, g=glob, t_=tt: fast.dit_fn(x, t_, c, g),
                                                      reps, device)["median_ms"]
    save()
    if device.type == "cuda":
        profile(fast, config, args.out / "profile.txt")

    # ---- ours, eager fp32 (accuracy reference for the fast path)
    ref32 = SAOEngine.load(str(work / "sao"), settings, device, torch.float32, fast=False)
    eager = ref32.generate(requests(1, 7))[0].audio
    results["fast_vs_fp32_rel_err"] = rel_err(ours_audio[1][0], eager)
    results["ours_eager_fp32_b1"] = timed(lambda: ref32.generate(requests(1, 5)), 2, device)
    print(f"fast vs fp32 eager: rel err {results['fast_vs_fp32_rel_err']:.2e}; eager fp32 b1 "
          f"{results['ours_eager_fp32_b1']['median_ms']:.0f} ms", flush=True)
    save()

    # ---- stock stable-audio-tools (fp16, as the original jerry deployed it)
    if not args.skip_stock:
        generate = _import_stock()
        from reference import build_reference

        stock = build_reference(config, state, work / "t5-base").to(device)
        if device.type == "cuda":
            stock = stock.half()
            for cond in stock.conditioner.conditioners.values():
                if "model" in cond.__dict__:
                    cond.__dict__["model"] = cond.__dict__["model"].half().to(device)

        def run_stock(batch: int, seed: int) -> torch.Tensor:
            out = generate(stock, steps=STEPS, cfg_scale=1.0, sample_size=sample_size, batch_size=batch, seed=seed,
                           conditioning=[{"prompt": PROMPTS[i % 8], "seconds_total": SECONDS} for i in range(batch)],
                           device=str(device), sampler_type="pingpong")
            return out.float().cpu()

        stock_audio = run_stock(1, 7)  # warm-up + accuracy sample (same seed, same noise stream as ours)
        results["ours_fast_vs_stock_rel_err"] = rel_err(ours_audio[1][0], stock_audio[0])
        results["stock_vs_fp32_rel_err"] = rel_err(stock_audio[0], eager)
        for batch in (1, 8):
            run_stock(batch, 3)
            t = timed(lambda b=batch: run_stock(b, 11), 1 if args.tiny else args.stock_reps, device)
            t["per_clip_ms"] = t["median_ms"] / batch
            results[f"stock_b{batch}"] = t
            print(f"stock b{batch}: {t['median_ms']:.1f} ms/call, {t['per_clip_ms']:.1f} ms/clip", flush=True)
            save()
        for batch in (1, 8):
            results[f"speedup_b{batch}"] = results[f"stock_b{batch}"]["median_ms"] / results[f"ours_b{batch}"]["median_ms"]
    save()
    write_table(results, args.out / "jerry.md")
    print((args.out / "jerry.md").read_text())


def profile(engine: Any, config: dict[str, Any], path: Path) -> None:
    """Kernel time of one un-graphed DiT step (batch 8) and one decode (batch 1): where the time goes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    frames = config["sample_size"] // 2048
    lines = []
    for name, batch in (("dit", 8), ("decode", 1)):
        lat = torch.randn(batch, config["model"]["io_channels"], frames, device="cuda", dtype=torch.float16)
        if name == "dit":
            cross, glob = engine._conditioning(PROMPTS[:batch], [SECONDS] * batch)
            tt = torch.ones(batch, device="cuda")

            def call(x=lat, t=tt, c=cross, g=glob) -> Any:  # noqa: ANN001
                return engine.net.model.model(x, t, c, g)
        else:

            def call(x=lat) -> Any:  # noqa: ANN001
                return engine.net.pretransform.model.decode(x, layout_2d=True)
        call()
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            call()
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=70)
        lines += [f"== {name} batch {batch}", table]
    path.write_text("\n".join(lines))
    print("\n".join(lines), flush=True)


def write_table(r: dict[str, Any], path: Path) -> None:
    def cell(key: str, field: str = "per_clip_ms") -> str:
        return f"{r[key][field]:.1f}" if key in r else "n/a"

    lines = [
        f"# jerry engine benchmark ({r['device']}, torch {r['torch']})",
        "",
        f"SAO-small-sized random weights ({r['params_dit_vae_M']} M DiT+VAE, plus a T5-base-sized encoder), "
        f"{r['seconds']:.0f} s window, {r['steps']} {r['sampler']} steps; text encoding and VAE decode included, "
        "audio returned to the host as float32. Medians of repeated calls in one process.",
        "",
        "| engine | batch | ms / call | ms / clip | speed-up |",
        "| --- | --- | --- | --- | --- |",
    ]
    for batch in (1, 8):
        lines.append(f"| stable-audio-tools 0.0.19 (fp16) | {batch} | {cell(f'stock_b{batch}', 'median_ms')} | "
                     f"{cell(f'stock_b{batch}')} | 1.0x |")
        speed = f"{r[f'speedup_b{batch}']:.1f}x" if f"speedup_b{batch}" in r else "n/a"
        lines.append(f"| jerry.sao (fp16, CUDA graphs) | {batch} | {cell(f'ours_b{batch}', 'median_ms')} | "
                     f"{cell(f'ours_b{batch}')} | {speed} |")
    lines += [
        "",
        "Breakdown of ours (ms): " + ", ".join(
            f"b{b}: text {r.get(f'ours_b{b}_text_ms', float('nan')):.1f}, "
            f"DiT step {r.get(f'ours_b{b}_dit_step_ms', float('nan')):.2f} (x{r['steps']}), "
            f"decode {r.get(f'ours_b{b}_decode_ms', float('nan')):.1f}" for b in (1, 8)),
        "",
        f"Accuracy (relative L2 of the audio, same seed and noise): fast fp16 vs our fp32 eager "
        f"{r.get('fast_vs_fp32_rel_err', float('nan')):.2e}; stock fp16 vs our fp32 eager "
        f"{r.get('stock_vs_fp32_rel_err', float('nan')):.2e}; fast vs stock "
        f"{r.get('ours_fast_vs_stock_rel_err', float('nan')):.2e}; "
        f"batch-8 row 0 vs batch 1 {r.get('batch_invariance_rel_err', float('nan')):.2e}.",
    ]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
