"""terry's MelodyFlow engine on the GPU: seconds per transform and peak VRAM, against the original fork's FlowModel.

Real-size random weights (962 M-parameter DiT in the published layout + the 48 kHz stereo SEANet VAE; a tiny 768-d T5
stands in for t5-base, whose one encoder call per request is negligible). For 10 s and 30 s inputs, euler (25 steps,
regularised inversion) and midpoint (64 steps): one warm-up (captures the CUDA graphs), then timed repeats.

Reference, same run and same weights: the fork's `FlowModel` (betweentwomidnights/melodyflow @ 4c1315a, passed with
--fork, never committed) running its `generate` for the same 30 s euler edit (inversion + guided regeneration) under
bf16 autocast, against our flow part alone (codec excluded on both sides, as the fork's codec needs its full package);
plus one 750-frame DiT forward compared numerically (cosine similarity).

    python3 bench/terry_bench.py --out bench/results [--fork DIR] [--tiny --device cpu]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from checkout import use_checkout  # bench/ is the script's folder, first on sys.path

use_checkout()

import torch  # noqa: E402
from timing import run_seconds  # noqa: E402

from terry.melodyflow.checkpoint import codec_config, dit_config  # noqa: E402
from terry.melodyflow.codec import SEANetVAE  # noqa: E402
from terry.melodyflow.demo import REAL_CODEC_CFG, REAL_DIT_CFG, tiny_configs  # noqa: E402
from terry.melodyflow.dit import FlowDiT  # noqa: E402
from terry.melodyflow.engine import EULER_REGULARIZATION, MelodyFlowEngine  # noqa: E402
from terry.melodyflow.solver import integrate  # noqa: E402


def build(tiny: bool, device: torch.device) -> tuple[FlowDiT, SEANetVAE, dict[str, Any]]:
    dit_raw, codec_raw = tiny_configs() if tiny else (REAL_DIT_CFG, REAL_CODEC_CFG)
    torch.manual_seed(0)
    with torch.device(device):
        dit = FlowDiT(dit_config(dit_raw))
        codec = SEANetVAE(codec_config(codec_raw))
    with torch.no_grad():
        for name, p in dit.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name.endswith("norm_cross.weight"):
                p.fill_(1.0)
            elif p.dim() == 2:
                p.normal_(0.0, p.shape[-1] ** -0.5)
        freqs = dit.transformer.rope.frequencies
        freqs.copy_(freqs.to(torch.bfloat16).float())
        dit.latent_std.uniform_(0.5, 1.5)
        dit.latent_mean.normal_(0.0, 0.1)
    codec.fold_weight_norm()
    dit.eval().requires_grad_(False)
    codec.eval().requires_grad_(False)
    return dit, codec, dit_raw


def load_fork(path: Path) -> Any:
    """Import the fork's models/flow.py with its heavy package __init__s and conditioners stubbed out."""

    def package(name: str, folder: Path) -> None:
        mod = types.ModuleType(name)
        mod.__path__ = [str(folder)]
        sys.modules[name] = mod

    base = path / "audiocraft"
    package("audiocraft", base)
    for sub in ("modules", "models", "utils"):
        package(f"audiocraft.{sub}", base / sub)
    utils = types.ModuleType("audiocraft.utils.utils")

    def vae_sample(mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(mean) * (torch.nn.functional.softplus(scale) + 1e-4) + mean

    utils.vae_sample = vae_sample  # type: ignore[attr-defined]
    sys.modules["audiocraft.utils.utils"] = utils
    sys.modules["audiocraft.utils"].utils = utils  # type: ignore[attr-defined]
    cond = types.ModuleType("audiocraft.modules.conditioners")

    class Attr:
        def __init__(self, text: dict) -> None:
            self.text = text

    class Dropout:
        def __init__(self, p: float) -> None:
            self.p = p

        def __call__(self, conditions: list) -> list:
            return [Attr({k: None for k in c.text}) for c in conditions]

    for name in ("ConditionFuser", "ConditioningProvider", "ConditionType"):
        setattr(cond, name, object)
    cond.ConditioningAttributes = Attr  # type: ignore[attr-defined]
    cond.ClassifierFreeGuidanceDropout = Dropout  # type: ignore[attr-defined]
    sys.modules["audiocraft.modules.conditioners"] = cond
    if importlib.util.find_spec("xformers") is None:
        xf = types.ModuleType("xformers")
        ops = types.ModuleType("xformers.ops")
        ops.unbind = torch.unbind  # type: ignore[attr-defined]
        # only probed by the fork's constructor; attention itself runs through torch SDPA (its 'torch' backend)
        ops.memory_efficient_attention = ops.LowerTriangularMask = None  # type: ignore[attr-defined]
        xf.ops = ops  # type: ignore[attr-defined]
        sys.modules["xformers"], sys.modules["xformers.ops"] = xf, ops
    import audiocraft.models.flow as flow

    return flow


class Provider(torch.nn.Module):
    def __init__(self, cond_dim: int, dim: int) -> None:
        super().__init__()
        self.conditioners = torch.nn.ModuleDict({"description": torch.nn.Module()})
        self.conditioners["description"].output_proj = torch.nn.Linear(cond_dim, dim)
        self.states: tuple[torch.Tensor, torch.Tensor] | None = None

    def tokenize(self, conditions: list) -> list:
        return conditions

    def forward(self, _tok: list) -> dict:
        return {"description": self.states}


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[list[float], float]:
    """(seconds per run, peak MiB allocated during the runs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = run_seconds(fn, device, repeats)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0
    return times, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--fork", type=Path, default=None)
    ap.add_argument("--tiny", action="store_true", help="tiny configs (a CPU smoke run of this script)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", default="10,30", help="input lengths to time, comma-separated")
    args = ap.parse_args()
    device = torch.device(args.device)
    from garycommon.settings import Settings
    from garycommon.textenc import load_t5, write_tiny_t5

    results: dict[str, Any] = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                               "torch": torch.__version__, "tiny": args.tiny, "runs": [], "errors": []}
    t0 = time.perf_counter()
    dit, codec, dit_raw = build(args.tiny, device)
    results["build_s"] = round(time.perf_counter() - t0, 2)
    fp32_state = {k: v.detach().to("cpu", copy=True) for k, v in dit.state_dict().items()} if args.fork else None
    dit.set_compute_dtype(torch.bfloat16 if device.type == "cuda" else torch.float32)
    dit.transformer.rope.tables(1024)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(local_models_dir=Path(tmp), device=args.device)
        write_tiny_t5(Path(tmp) / "t5-base")
        tok, enc = load_t5("t5-base", settings, device, torch.float32)
    engine = MelodyFlowEngine(dit, codec, tok, enc, device=device, demo=False)
    results["dit_params"] = sum(p.numel() for p in dit.parameters())
    results["codec_params"] = sum(p.numel() for p in codec.parameters())
    results["weights_mib"] = round(torch.cuda.memory_allocated() / 2**20) if device.type == "cuda" else 0
    prompt = "an expressive solo grand piano piece in a romantic classical style"
    gen = torch.Generator().manual_seed(0)

    lengths = [int(x) for x in args.seconds.split(",")]
    for seconds in lengths:
        audio = torch.randn(2, seconds * 48000, generator=gen) * 0.1
        for solver in ("euler", "midpoint"):
            try:
                warm = time.perf_counter()
                engine.transform(audio, prompt, solver=solver, seed=1)
                warm = time.perf_counter() - warm
                times, peak = timed(lambda a=audio, s=solver: engine.transform(a, prompt, solver=s, seed=1), device, args.repeats)
                row = {"engine": "ours", "graphs": type(engine._step).__name__ == "GraphedDiT", "seconds": seconds,
                       "solver": solver, "first_call_s": round(warm, 3), "median_s": round(statistics.median(times), 3),
                       "min_s": round(min(times), 3), "peak_vram_mib": round(peak)}
                results["runs"].append(row)
                print(row, flush=True)
            except Exception:  # noqa: BLE001 - keep measuring the rest, report the failure
                results["errors"].append(traceback.format_exc())
                print(traceback.format_exc(), flush=True)

    # breakdown + eager baseline for the headline case (the longest input, euler)
    longest = max(lengths)
    audio = torch.randn(2, longest * 48000, generator=gen) * 0.1
    results["breakdown_seconds"] = longest
    try:
        frames = longest * 25
        wav = audio[None].to(device)
        with torch.inference_mode():
            enc_t, _ = timed(lambda: codec.encode(wav), device, 2)
            z = torch.randn(1, dit.config.latent_dim, frames, device=device)
            dec_t, _ = timed(lambda: codec.decode(z), device, 2)
        results["codec_encode_s"] = round(min(enc_t), 3)
        results["codec_decode_s"] = round(min(dec_t), 3)
        eager = MelodyFlowEngine(dit, codec, tok, enc, device=device, demo=False, use_cuda_graphs=False)
        eager.transform(audio, prompt, seed=1, steps=2)
        times, peak = timed(lambda: eager.transform(audio, prompt, seed=1), device, 2)
        results["runs"].append({"engine": "ours-eager", "graphs": False, "seconds": longest, "solver": "euler",
                                "median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
                                "peak_vram_mib": round(peak)})
        print(results["runs"][-1], flush=True)
    except Exception:  # noqa: BLE001
        results["errors"].append(traceback.format_exc())
        print(traceback.format_exc(), flush=True)

    if args.fork:
        try:
            reference(results, args, device, dit, fp32_state, dit_raw, engine, longest * 25)
        except Exception:  # noqa: BLE001
            results["errors"].append(traceback.format_exc())
            print(traceback.format_exc(), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "terry.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "errors"}, indent=1))
    print("errors:", len(results["errors"]))


def reference(results: dict, args: argparse.Namespace, device: torch.device, dit: FlowDiT, fp32_state: dict | None,
              dit_raw: dict, engine: MelodyFlowEngine, frames: int) -> None:
    flow = load_fork(args.fork)
    c = dit.config
    provider = Provider(c.cond_dim, c.dim)
    kwargs = dict(dit_raw["transformer_lm"])
    ref = flow.FlowModel(provider, None, device=str(device), **kwargs).eval().requires_grad_(False)
    ref.load_state_dict(fp32_state, strict=True)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    text = engine._encode_text("an expressive solo grand piano piece")
    cond, bias = text
    mask = (bias[:, 0, 0, 1:] == 0).long()
    gen = torch.Generator(device=device).manual_seed(3)
    z = torch.randn(1, c.latent_dim, frames, device=device, generator=gen)
    t = torch.tensor([0.37], device=device)
    with torch.inference_mode():
        ours = dit(z, t, cond, bias)
        with autocast:
            theirs = ref(z, t[:, None], cond.float(), torch.log(mask.float()[:, None, None, :])).float()
        theirs32 = ref(z, t[:, None], cond.float(), torch.log(mask.float()[:, None, None, :])).float()
    cos = torch.nn.functional.cosine_similarity(ours.flatten(), theirs.flatten(), dim=0).item()
    cos32 = torch.nn.functional.cosine_similarity(ours.flatten(), theirs32.flatten(), dim=0).item()
    results["forward_vs_fork"] = {"frames": frames, "cosine_vs_fork_autocast": round(cos, 6),
                                  "cosine_vs_fork_fp32": round(cos32, 6),
                                  "max_abs_err_vs_fork_autocast": float((ours - theirs).abs().max())}

    x0 = torch.randn(1, c.latent_dim, frames, device=device, generator=gen)
    null_cond = torch.zeros_like(cond)
    null_bias = torch.full_like(bias, float("-inf"))
    null_bias[..., 0] = 0
    attrs = [sys.modules["audiocraft.modules.conditioners"].ConditioningAttributes({"description": "x"})]

    def theirs_edit(steps: int) -> None:
        # no_grad, not inference_mode: the fork's regularisation turns autograd back on inside
        with torch.no_grad(), autocast:
            provider.states = (torch.zeros(2, cond.shape[1], c.dim, device=device), torch.zeros(2, cond.shape[1], device=device))
            inv = ref.generate(prompt=x0, conditions=attrs, solver="euler", steps=steps, source_flowstep=1.0,
                               target_flowstep=0.12, regularize=True, regularize_iters=2, keep_last_k_iters=1, lambda_kl=0.2)
            provider.states = (torch.cat([cond.float(), null_cond.float()]), torch.cat([mask, torch.zeros_like(mask)]).float())
            ref.generate(prompt=inv, conditions=attrs, solver="euler", steps=steps, source_flowstep=0.12, target_flowstep=1.0)

    def ours_edit(steps: int) -> None:
        step = engine._step

        def guided(x: torch.Tensor, tt: float) -> torch.Tensor:
            rows = torch.full((2,), tt, device=device)
            v = step(torch.cat([x, x]), rows, torch.cat([cond, null_cond]), torch.cat([bias, null_bias]))
            return 5.0 * v[:1] - 4.0 * v[1:]

        with torch.inference_mode():
            inv = integrate(lambda x, tt: step(x, torch.full((x.shape[0],), tt, device=device)), x0, 1.0, 0.12, solver="euler",
                            steps=steps, regularization=EULER_REGULARIZATION, x0=x0, generator=torch.Generator(device=device))
            integrate(guided, inv, 0.12, 1.0, solver="euler", steps=steps)

    theirs_edit(2)
    ref_t, ref_peak = timed(lambda: theirs_edit(25), device, 1)
    ours_edit(2)
    our_t, our_peak = timed(lambda: ours_edit(25), device, 2)
    results["flow_only_euler"] = {"frames": frames, "fork_s": round(min(ref_t), 3), "ours_s": round(min(our_t), 3),
                                      "speedup": round(min(ref_t) / min(our_t), 2), "fork_peak_vram_mib": round(ref_peak),
                                      "ours_peak_vram_mib": round(our_peak)}
    print(results["flow_only_euler"], flush=True)


if __name__ == "__main__":
    main()
