"""CPU_DTYPE: bf16 weights/compute on CPUs that run bf16 natively, fp32 elsewhere or when forced; and what each engine
does in bf16 on a CPU (forced with CPU_DTYPE=bf16, so these run on any CPU): sane output and closeness to fp32.

The engines' own test folders pin CPU_DTYPE=fp32 (they compare with the reference libraries); these tests are the
bf16 counterpart. Tolerances are for random weights, where bf16's 8-bit mantissa shows as ~1% relative error."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from garycommon import devices
from garycommon.devices import cpu_dtype, cpu_has_native_bf16
from garycommon.settings import Settings
from garycommon.textenc import write_tiny_t5
from tests.torch_threads import one_torch_thread  # noqa: F401 - autouse: one intra-op thread

CPU = torch.device("cpu")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative RMS error of b against a."""
    return float((a.float() - b.float()).pow(2).mean().sqrt() / a.float().pow(2).mean().sqrt())


# ---------------------------------------------------------------- the setting


def test_forced_values() -> None:
    assert cpu_dtype("fp32") is torch.float32
    assert cpu_dtype("bf16") is torch.bfloat16
    with pytest.raises(ValueError):
        cpu_dtype("fp16")


def test_auto_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cpu_dtype("auto") is (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert cpu_dtype("auto") is torch.float32
    assert cpu_dtype("bf16") is torch.bfloat16
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert cpu_dtype("auto") is torch.bfloat16
    assert cpu_dtype("fp32") is torch.float32


def test_native_probe_is_a_bool_and_agrees_with_onednn() -> None:
    native = cpu_has_native_bf16()
    assert isinstance(native, bool)
    if native:
        assert torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def test_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().cpu_dtype == "auto"
    monkeypatch.setenv("CPU_DTYPE", "fp32")
    assert Settings().cpu_dtype == "fp32"
    monkeypatch.setenv("CPU_DTYPE", "half")
    with pytest.raises(ValidationError):
        Settings()


# ---------------------------------------------------------------- MusicGen


@pytest.fixture(scope="module")
def musicgen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gary.musicgen.demo import write_demo_checkpoint

    root = tmp_path_factory.mktemp("mg")
    write_tiny_t5(root / "t5-base")
    write_demo_checkpoint(root / "testowner" / "tiny", size="small", seed=3)
    return root


def test_musicgen_bf16_generates(musicgen_dir: Path) -> None:
    from gary.musicgen import GenerationRequest, MusicGenEngine
    from gary.musicgen.model import cpu_packing_works

    engine = MusicGenEngine(Settings(local_models_dir=musicgen_dir, model_allow_owners=["testowner"], device="cpu",
                                     cpu_dtype="bf16"), CPU)
    assert engine.dtype is torch.bfloat16
    prompt = 0.3 * torch.randn(1, 12800, generator=torch.Generator().manual_seed(1))
    reqs = [GenerationRequest("testowner/tiny", prompt, 32000, duration=1.0, description="lofi drums", seed=4),
            GenerationRequest("testowner/tiny", None, 32000, duration=0.8, description=None, seed=5)]
    out = engine.generate(reqs)
    model = engine.model("testowner/tiny")
    assert model.lm.emb[0].weight.dtype is torch.bfloat16
    assert model.packed == cpu_packing_works(), "oneDNN-packed weights wherever this torch has them"
    assert model.param_bytes() > 0
    assert [r.audio.shape for r in out] == [torch.Size([1, 32000]), torch.Size([1, 25600])]
    assert all(r.audio.dtype is torch.float32 and torch.isfinite(r.audio).all() for r in out)
    again = engine.generate(reqs[:1])[0]
    assert torch.equal(again.audio, out[0].audio), "a seed reproduces its result in bf16 too"


def test_musicgen_bf16_logits_close_to_fp32() -> None:
    """Teacher-forced logits and one cached decode step of a 4-layer, 256-wide LM: bf16 against fp32."""
    from gary.musicgen.checkpoint import lm_config
    from gary.musicgen.demo import lm_xp_cfg, random_lm_state
    from gary.musicgen.lm import build_lm
    from gary.musicgen.model import pack_for_cpu

    cfg = lm_xp_cfg(dim=256, num_heads=4, num_layers=4)
    cfg["transformer_lm"]["cross_attention"] = True
    lm32, _ = build_lm(lm_config(cfg), random_lm_state(cfg, 0))
    lm16 = copy.deepcopy(lm32).to(torch.bfloat16)
    packed = copy.deepcopy(lm16)
    lms = [(torch.float32, lm32), (torch.bfloat16, lm16)]
    if pack_for_cpu(packed):
        lms.append(("packed", packed))
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, 2048, (2, 4, 40), generator=gen)
    cond = torch.randn(2, 6, 256, generator=gen)
    out = {}
    with torch.inference_mode():
        for key, lm in lms:
            dtype = torch.float32 if key is torch.float32 else torch.bfloat16
            cross = lm.cross_kv(cond.to(dtype), None)
            cache = lm.new_cache(2, 48, dtype, CPU)
            full = lm(tokens[..., :-1], cache, cross)
            step = lm.step(tokens[..., -1], torch.tensor([39, 39]), cache, cross)
            assert full.dtype is torch.float32 and step.dtype is torch.float32, "logits are fp32 for sampling"
            out[key] = full, step
    (f32, s32), (f16, s16) = out[torch.float32], out[torch.bfloat16]
    assert torch.isfinite(f16).all() and torch.isfinite(s16).all()
    assert _rel(f32, f16) < 0.03 and _rel(s32, s16) < 0.03
    p32, p16 = f32.softmax(-1), f16.softmax(-1)
    assert 0.5 * (p32 - p16).abs().sum(-1).max() < 0.02, "sampling distributions within 2% total variation"
    if "packed" in out:  # the same bf16 products in oneDNN's weight layout: only the summation order differs
        fp, sp = out["packed"]
        assert _rel(f16, fp) < 0.01 and _rel(s16, sp) < 0.01
        assert _rel(f32, fp) < 0.03 and _rel(s32, sp) < 0.03


# ---------------------------------------------------------------- SAO


@pytest.fixture(scope="module")
def sao_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from jerry.sao.demo import tiny_config, write_demo_checkpoint

    root = tmp_path_factory.mktemp("sao")
    write_tiny_t5(root / "t5-base")
    config = tiny_config(sample_size=2048 * 16, latent_dim=8, channels=4, embed_dim=64, depth=2, num_heads=2)
    return write_demo_checkpoint(root / "local" / "small", config=config, seed=0)


def test_sao_bf16_generates_close_to_fp32(sao_dir: Path) -> None:
    from jerry.sao import SAOEngine, SAORequest

    base = Settings(local_models_dir=sao_dir.parents[1], device="cpu")
    e32 = SAOEngine.load(str(sao_dir), base.model_copy(update={"cpu_dtype": "fp32"}), CPU)
    e16 = SAOEngine.load(str(sao_dir), base.model_copy(update={"cpu_dtype": "bf16"}), CPU)
    assert next(e16.net.parameters()).dtype is torch.bfloat16
    assert next(e32.net.parameters()).dtype is torch.float32
    req = SAORequest(prompt="warm pads", seconds_total=1.0, steps=4, seed=3)
    a32, a16 = e32.generate([req])[0].audio, e16.generate([req])[0].audio
    assert a16.shape == a32.shape and a16.dtype is torch.float32 and torch.isfinite(a16).all()
    # the VAE decode alone (the channels-last bf16 layout) on the same latents
    lat = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        d32 = e32.decode_fn(lat).float()
        d16 = e16.decode_fn(lat).float()
    assert d16.shape == d32.shape and torch.isfinite(d16).all()
    assert _rel(d32, d16) < 0.03
    assert _rel(a32, a16) < 0.05, "4 sampler steps of bf16 DiT + VAE stay near the fp32 clip"


# ---------------------------------------------------------------- MelodyFlow


def test_melodyflow_bf16_transforms_close_to_fp32(tmp_path: Path) -> None:
    from terry.melodyflow import MelodyFlowEngine
    from terry.melodyflow.demo import install_demo

    settings = Settings(local_models_dir=tmp_path, device="cpu", cpu_dtype="bf16")
    name = install_demo(settings)
    engine = MelodyFlowEngine.load(name, settings, CPU)
    dit = engine.dit
    assert dit.compute_dtype is torch.bfloat16
    audio = 0.1 * torch.randn(2, 48000, generator=torch.Generator().manual_seed(0))
    out = engine.transform(audio, "warm lofi piano", seed=7, steps=2)
    assert out.shape == audio.shape and out.dtype is torch.float32 and torch.isfinite(out).all()
    ref = copy.deepcopy(dit)
    ref.to(torch.float32)
    c = dit.config
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(2, c.latent_dim, 50, generator=gen)
    t = torch.tensor([0.3, 0.7])
    cond = torch.randn(2, 5, c.dim, generator=gen)
    bias = torch.zeros(2, 1, 1, 6)
    with torch.inference_mode():
        v16 = dit(z, t, cond.bfloat16(), bias.bfloat16())
        v32 = ref(z, t, cond, bias)
    assert v16.dtype is torch.float32 and torch.isfinite(v16).all()
    assert _rel(v32, v16) < 0.03
