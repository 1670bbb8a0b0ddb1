"""CPU benchmark (a machine without a GPU): our engines against the reference libraries, same CPU, same process,
same random weights of the real model sizes; short workloads scaled to per-step / per-second figures. Ours runs twice:
fp32 and bf16 (what CPU_DTYPE=auto picks on a CPU with native bf16: AMX / AVX512-BF16); the references run at their
own default, fp32. The load average of the machine is recorded around each part (the machine may be shared).

- MusicGen-small (1024-d, 24 layers): 6 s prompt -> 6.6 s with a description (top_k 250, cfg 3), batch 1; decode
  ms per step from each engine's progress callback (ours: `generate_eager`; audiocraft 1.3.0
  `generate_continuation`), plus the time to the first step (prompt encoding + prefill). The seconds a full
  6 s -> 30 s continuation takes with our engine are estimated from those parts and a timed EnCodec decode of 30 s
  (`--full-musicgen` also runs it, bf16), and bf16's teacher-forced logits are compared with fp32's.
- SAO-small (stable-audio-open-small's layout), 12 s at the 8 pingpong steps jerry serves: ours (jerry's
  `SAOEngine`, fp32 and bf16, no fast path) vs stable-audio-tools 0.0.19 `generate_diffusion_cond`, best of
  `--reps` after a 1-step warm-up (the VAE decode of 12 s of audio is most of it on a CPU, so the whole clip is the unit).
- MelodyFlow (962 M DiT): one DiT forward over 10 s (250 latent frames) with CFG rows (batch 2), ours vs the
  original fork's `FlowModel` (`--fork DIR`, the betweentwomidnights/melodyflow checkout; skipped without it), sharing
  one set of weights; a 25-step euler edit makes 2 x 25 forwards of that size.

    python3 bench/cpu_bench.py --out bench/results [--only musicgen sao melodyflow] [--fork DIR] [--threads 2]
        [--reps 1] [--full-musicgen]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from musicgen_bench import DESCRIPTION, PROMPT_S, SIZES, bootstrap  # bench/ is the script's folder, first on sys.path

ROOT = Path(__file__).resolve().parents[1]
SHORT_S = 6.6  # MusicGen: 33 decode steps after the 6 s prompt
FULL_S = 30.0


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        return f"{fields['Model name'].strip()} ({fields['CPU(s)'].strip()} CPUs)"
    except (OSError, subprocess.CalledProcessError, KeyError):
        return platform.processor() or "unknown"


def load_avg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def ratio(ref: float, ours: float) -> float:
    return round(ref / ours, 2)


def per_step(stamps: list[tuple[int, float]], skip: int = 3) -> float:
    (s0, t0), (s1, t1) = stamps[skip], stamps[-1]
    return (t1 - t0) / (s1 - s0)


# ---------------------------------------------------------------- MusicGen


def musicgen(work: Path, full: bool) -> dict[str, Any]:
    import torch
    from omegaconf import OmegaConf

    from gary.musicgen.checkpoint import compression_config, lm_config
    from gary.musicgen.conditioning import TextConditioner
    from gary.musicgen.demo import compression_xp_cfg, lm_xp_cfg
    from gary.musicgen.encodec import build_compression
    from gary.musicgen.lm import build_lm
    from gary.musicgen.model import MusicGenModel
    from gary.musicgen.types import GenerationRequest
    from garycommon.settings import Settings
    from garycommon.textenc import load_t5, write_tiny_t5
    from tests.gary_musicgen.reference import route_t5

    write_tiny_t5(work / "t5-base")
    settings = Settings(local_models_dir=work, device="cpu")
    route_t5(settings)
    from audiocraft.models import builders
    from audiocraft.models.musicgen import MusicGen

    device = torch.device("cpu")
    dim, heads, layers = SIZES["small"]
    ac_lm_cfg = OmegaConf.create(lm_xp_cfg(dim=dim, num_heads=heads, num_layers=layers))
    ac_lm_cfg.device, ac_lm_cfg.dtype = "cpu", "float32"
    torch.manual_seed(0)
    ref_lm = builders.get_lm_model(ac_lm_cfg).eval()
    ref_lm.cfg = ac_lm_cfg
    ac_comp_cfg = OmegaConf.create(compression_xp_cfg(n_filters=64, dimension=128, lstm=2))
    ac_comp_cfg.device = "cpu"
    ref_codec = builders.get_compression_model(ac_comp_cfg).eval()
    with torch.no_grad():
        for layer in ref_codec.quantizer.vq.layers:
            layer._codebook.embed.normal_()
    ref = MusicGen("audiocraft-small", ref_codec, ref_lm)
    lm, cond_state = build_lm(lm_config(OmegaConf.to_container(ac_lm_cfg, resolve=True)), dict(ref_lm.state_dict()))
    codec = build_compression(compression_config(OmegaConf.to_container(ac_comp_cfg, resolve=True)),
                              dict(ref_codec.state_dict()), stereo_interleaved=False, n_q=None)
    tokenizer, t5 = load_t5(str(work / "t5-base"), settings, device, torch.float32)
    text = TextConditioner(tokenizer, t5, cond_state, dim)
    ours = MusicGenModel("ours-small", lm, codec, text, device, torch.float32)
    ours_bf16 = MusicGenModel("ours-small-bf16", copy.deepcopy(lm).to(torch.bfloat16), codec, text, device,
                              torch.bfloat16)
    params = sum(p.numel() for p in lm.parameters())
    prompt = 0.1 * torch.randn(1, int(PROMPT_S * 32000), generator=torch.Generator().manual_seed(1))

    def run_ours(duration: float, model: MusicGenModel = ours) -> dict[str, Any]:
        stamps: list[tuple[int, float]] = []
        req = GenerationRequest("bench", prompt, 32000, duration=duration, description=DESCRIPTION, seed=5)
        t0 = time.perf_counter()
        out = model.generate([req], lambda s, _t: stamps.append((s, time.perf_counter())))
        secs = time.perf_counter() - t0
        assert out[0].audio.shape[-1] == int(duration * 50) * 640
        return {"seconds": round(secs, 2), "steps": stamps[-1][0], "ms_per_step": round(1000 * per_step(stamps), 1),
                "first_step_s": round(stamps[0][1] - t0, 2), "after_last_step_s": round(t0 + secs - stamps[-1][1], 2)}

    def run_ref(duration: float) -> dict[str, Any]:
        stamps: list[tuple[int, float]] = []
        ref.set_generation_params(use_sampling=True, top_k=250, top_p=0.0, temperature=1.0, duration=duration,
                                  cfg_coef=3.0)
        ref.set_custom_progress_callback(lambda s, _t: stamps.append((s, time.perf_counter())))
        torch.manual_seed(5)
        t0 = time.perf_counter()
        with torch.no_grad():
            audio = ref.generate_continuation(prompt[None], 32000, [DESCRIPTION], progress=True)
        secs = time.perf_counter() - t0
        assert audio.shape[-1] == int(duration * 50) * 640
        return {"seconds": round(secs, 2), "steps": stamps[-1][0], "ms_per_step": round(1000 * per_step(stamps), 1),
                "first_step_s": round(stamps[0][1] - t0, 2)}

    result: dict[str, Any] = {"lm_params_M": round(params / 1e6, 1), "workload": f"{PROMPT_S:g} s -> {SHORT_S:g} s, batch 1"}
    result["load_before"] = load_avg()
    result["ours"] = run_ours(SHORT_S)
    print("musicgen ours fp32", result["ours"], flush=True)
    result["ours_bf16"] = run_ours(SHORT_S, ours_bf16)
    print("musicgen ours bf16", result["ours_bf16"], flush=True)
    result["audiocraft"] = run_ref(SHORT_S)
    print("musicgen audiocraft", result["audiocraft"], flush=True)
    ref_ms = result["audiocraft"]["ms_per_step"]
    result["speedup_per_step"] = ratio(ref_ms, result["ours"]["ms_per_step"])
    result["speedup_per_step_bf16"] = ratio(ref_ms, result["ours_bf16"]["ms_per_step"])
    result["speedup_first_step_bf16"] = ratio(result["audiocraft"]["first_step_s"], result["ours_bf16"]["first_step_s"])
    # logits of one teacher-forced pass over the prompt's codes, bf16 against fp32 (the tokens differ once sampled)
    with torch.no_grad():
        codes = ours.encode_prompt(prompt, 32000)[None, :, :100]
        cond = text.encode(DESCRIPTION).emb[None]
        logits = {}
        for model in (ours, ours_bf16):
            cache = model.lm.new_cache(1, 100, model.dtype, device)
            logits[model.dtype] = model.lm(codes, cache, model.lm.cross_kv(cond.to(model.dtype), None))
        a, b = logits[torch.float32], logits[torch.bfloat16]
        pa, pb = a.softmax(-1), b.softmax(-1)
        result["bf16_vs_fp32_logits"] = {
            "rel_rms": round(float((a - b).pow(2).mean().sqrt() / a.pow(2).mean().sqrt()), 4),
            "top1_agree": round(float((a.argmax(-1) == b.argmax(-1)).float().mean()), 3),
            "total_variation_max": round(float(0.5 * (pa - pb).abs().sum(-1).max()), 4)}
    print("musicgen bf16 vs fp32 logits", result["bf16_vs_fp32_logits"], flush=True)
    codes = torch.randint(0, 2048, (1, 4, int(FULL_S * 50)))
    t0 = time.perf_counter()
    with torch.no_grad():
        codec.decode(codes)
    decode_30 = time.perf_counter() - t0
    full_steps = int(FULL_S * 50) + 3 - int(PROMPT_S * 50)
    for key, label in (("ours", "ours_30s_estimate"), ("ours_bf16", "ours_bf16_30s_estimate")):
        o = result[key]
        result[label] = {"steps": full_steps, "encodec_decode_30s_s": round(decode_30, 2),
                         "seconds": round(o["first_step_s"] + full_steps * o["ms_per_step"] / 1000 + decode_30, 1)}
    if full:
        result["ours_bf16_30s_measured"] = run_ours(FULL_S, ours_bf16)
        print("musicgen ours bf16 30 s", result["ours_bf16_30s_measured"], flush=True)
    result["load_after"] = load_avg()
    return result


# ---------------------------------------------------------------- SAO-small


def sao(work: Path, reps: int) -> dict[str, Any]:
    import torch
    from jerry_bench import PROMPTS, STEPS, _import_stock
    from safetensors.torch import save_file

    from garycommon.settings import Settings
    from garycommon.textenc import write_tiny_t5
    from jerry.sao import SAOEngine, SAORequest
    from jerry.sao.demo import random_state_dict

    sys.path.insert(0, str(ROOT / "tests" / "jerry_sao"))
    from reference import build_reference

    device = torch.device("cpu")
    seconds = 12.0
    config = json.loads((ROOT / "tests/jerry_sao/sao_small_model_config.json").read_text())
    write_tiny_t5(work / "t5-base", d_model=768, d_kv=64, num_heads=12, d_ff=3072, num_layers=12)
    state = random_state_dict(config, seed=0)
    (work / "sao").mkdir(exist_ok=True)
    save_file(state, str(work / "sao" / "model.safetensors"))
    (work / "sao" / "model_config.json").write_text(json.dumps(config))
    settings = Settings(local_models_dir=work, device="cpu")
    ours = SAOEngine.load(str(work / "sao"), settings, device, torch.float32, fast=False)
    ours_bf16 = SAOEngine.load(str(work / "sao"), settings, device, torch.bfloat16, fast=False)
    generate = _import_stock()
    stock = build_reference(config, state, work / "t5-base").to(device)
    del state

    clips: dict[str, torch.Tensor] = {}

    def run_engine(engine: SAOEngine, label: str, steps: int) -> float:
        t0 = time.perf_counter()
        out = engine.generate([SAORequest(prompt=PROMPTS[0], seconds_total=seconds, steps=steps, seed=3)])
        secs = time.perf_counter() - t0
        clips[label] = out[0].audio
        return secs

    def run_stock(steps: int) -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            generate(stock, steps=steps, cfg_scale=1.0, sample_size=config["sample_size"], batch_size=1, seed=3,
                     conditioning=[{"prompt": PROMPTS[0], "seconds_total": seconds}], device="cpu",
                     sampler_type="pingpong")
        return time.perf_counter() - t0

    result: dict[str, Any] = {"workload": f"{seconds:g} s, batch 1, {STEPS} pingpong steps, cfg 1 (as jerry serves it)",
                              "load_before": load_avg()}
    runs_of = (("ours", lambda n: run_engine(ours, "ours", n)), ("ours_bf16", lambda n: run_engine(ours_bf16, "bf16", n)),
               ("stable_audio_tools", run_stock))
    for label, fn in runs_of:
        fn(1)  # warm-up
        runs = [fn(STEPS) for _ in range(reps)]
        result[label] = {"s_per_clip": round(min(runs), 2), "runs_s": [round(r, 2) for r in runs],
                         "s_per_audio_second": round(min(runs) / seconds, 3)}
        print("sao", label, result[label], flush=True)
    ref_s = result["stable_audio_tools"]["s_per_clip"]
    result["speedup"] = ratio(ref_s, result["ours"]["s_per_clip"])
    result["speedup_bf16"] = ratio(ref_s, result["ours_bf16"]["s_per_clip"])
    a, b = clips["ours"], clips["bf16"]
    err = float((a - b).pow(2).mean().sqrt() / a.pow(2).mean().sqrt())
    result["bf16_vs_fp32_clip"] = {"rel_rms": round(err, 4), "snr_db": round(-20 * math.log10(max(err, 1e-12)), 1)}
    latents = torch.randn(1, ours.cfg.vae.latent_dim, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        t0 = time.perf_counter()
        d32 = ours.decode_fn(latents).float()
        t1 = time.perf_counter()
        d16 = ours_bf16.decode_fn(latents).float()
        t2 = time.perf_counter()
    err = float((d32 - d16).pow(2).mean().sqrt() / d32.pow(2).mean().sqrt())
    result["vae_decode_64_frames"] = {"fp32_s": round(t1 - t0, 2), "bf16_s": round(t2 - t1, 2),
                                      "bf16_snr_db": round(-20 * math.log10(max(err, 1e-12)), 1)}
    print("sao bf16 vs fp32", result["bf16_vs_fp32_clip"], result["vae_decode_64_frames"], flush=True)
    result["load_after"] = load_avg()
    return result


# ---------------------------------------------------------------- MelodyFlow


def melodyflow(fork: Path | None, reps: int) -> dict[str, Any]:
    import torch
    from terry_bench import Provider, build

    device = torch.device("cpu")
    dit, _codec, dit_raw = build(False, device)
    del _codec
    dit.set_compute_dtype(torch.float32)
    c = dit.config
    frames = 250  # 10 s at 25 latent frames / s
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(2, c.latent_dim, frames, generator=gen)
    t = torch.tensor([0.37, 0.37])
    cond = torch.randn(2, 12, c.dim, generator=gen)
    bias = torch.zeros(2, 1, 1, 13)  # ours: an always-open zero slot first, then the 12 text slots
    fork_mask = torch.zeros(2, 1, 1, 12)  # the fork: log of the 12 text slots' mask
    result: dict[str, Any] = {"workload": "one DiT forward, 10 s (250 frames), batch 2 (CFG rows)",
                              "dit_params_M": round(sum(p.numel() for p in dit.parameters()) / 1e6, 1)}

    def timed(fn: Any) -> float:
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    result["load_before"] = load_avg()
    with torch.inference_mode():
        ours_out = dit(z, t, cond, bias)
        result["ours_s_per_forward"] = round(timed(lambda: dit(z, t, cond, bias)), 3)
    print("melodyflow ours", result, flush=True)
    if fork is None:
        result["fork"] = "not run: no --fork checkout given"
    else:
        fork_forward(fork, dit, dit_raw, Provider, flow_inputs=(z, t, cond, fork_mask), ours_out=ours_out,
                     result=result, timed=timed)
    # bf16 last: it casts our DiT's matmul weights in place (the fork shared those tensors)
    dit.set_compute_dtype(torch.bfloat16)
    cond16, bias16 = cond.to(torch.bfloat16), bias.to(torch.bfloat16)
    with torch.inference_mode():
        out16 = dit(z, t, cond16, bias16)
        result["ours_bf16_s_per_forward"] = round(timed(lambda: dit(z, t, cond16, bias16)), 3)
    result["bf16_vs_fp32_cosine"] = round(torch.nn.functional.cosine_similarity(ours_out.flatten(), out16.flatten(),
                                                                                dim=0).item(), 6)
    result["bf16_vs_fp32_rel_rms"] = round(float((ours_out - out16).pow(2).mean().sqrt()
                                                 / ours_out.pow(2).mean().sqrt()), 4)
    if "fork_s_per_forward" in result:
        result["speedup_per_forward_bf16"] = ratio(result["fork_s_per_forward"], result["ours_bf16_s_per_forward"])
    for key in ("ours", "ours_bf16"):  # a 25-step euler edit: 50 forwards, all at batch 2
        result[f"{key}_euler25_flow_upper_bound_s"] = round(50 * result[f"{key}_s_per_forward"], 1)
    result["load_after"] = load_avg()
    print("melodyflow", result, flush=True)
    return result


def fork_forward(fork: Path, dit: Any, dit_raw: dict[str, Any], provider: Any, *, flow_inputs: tuple, ours_out: Any,
                 result: dict[str, Any], timed: Any) -> None:
    import torch
    from terry_bench import load_fork

    z, t, cond, fork_mask = flow_inputs
    c = dit.config
    flow = load_fork(fork)
    kwargs = dict(dit_raw["transformer_lm"])
    with torch.device("meta"):
        ref = flow.FlowModel(provider(c.cond_dim, c.dim), None, device="meta", **kwargs)
    ref.load_state_dict(dit.state_dict(), strict=True, assign=True)  # the same tensors: no second copy in memory
    ref.eval().requires_grad_(False)
    with torch.inference_mode():
        theirs = ref(z, t[:, None], cond, fork_mask)
        result["cosine_vs_fork"] = round(torch.nn.functional.cosine_similarity(ours_out.flatten(), theirs.flatten(),
                                                                               dim=0).item(), 6)
        result["fork_s_per_forward"] = round(timed(lambda: ref(z, t[:, None], cond, fork_mask)), 3)
    result["speedup_per_forward"] = ratio(result["fork_s_per_forward"], result["ours_s_per_forward"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--only", nargs="+", default=["musicgen", "sao", "melodyflow"])
    ap.add_argument("--fork", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (2 on a busy 2-core box thrash: ~6x slower)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--full-musicgen", action="store_true", help="also run the whole 6 s -> 30 s continuation")
    args = ap.parse_args()
    bootstrap(carried=False)
    import torch

    torch.set_num_threads(args.threads)
    path = args.out / "cpu.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    results.update({"cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__,
                    "note": "a shared 2-core development machine: other work ran beside these runs"})
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for part in args.only:
            t0 = time.perf_counter()
            if part == "musicgen":
                results["musicgen_small"] = musicgen(Path(tmp), args.full_musicgen)
            elif part == "sao":
                results["sao_small"] = sao(Path(tmp), args.reps)
            elif part == "melodyflow":
                results["melodyflow"] = melodyflow(args.fork, args.reps)
            results.setdefault("wall_s", {})[part] = round(time.perf_counter() - t0, 1)
            path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
