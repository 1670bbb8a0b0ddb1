"""Tiny random SAO-small look-alike written in the published file layout (demo mode, service tests).

Same architecture, sample rate, window (524288 samples = 11.89 s at 44.1 kHz) and 2048x downsampling as the real
model, but a few thousand times fewer weights, so a full 8-step generation takes well under a second on a CPU.
It is written as `model_config.json` + `model.safetensors` (weight-normed VAE convs, inference prefixes) and loaded
by exactly the code that loads the real checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from garycommon.settings import Settings

from .config import parse_config
from .engine import DEFAULT_MODEL, SAONet
from .weights import unfold_weight_norm

DEMO_MARKER = "demo_model.json"


def tiny_config(*, sample_size: int = 524288, latent_dim: int = 8, channels: int = 4, embed_dim: int = 64,
                depth: int = 2, num_heads: int = 2, cond_dim: int = 768) -> dict[str, Any]:
    """A `model_config.json` with SAO-small's structure and the given (small) sizes."""
    oobleck = {"channels": channels, "c_mults": [1, 2, 4, 8, 16], "strides": [2, 4, 4, 8, 8], "use_snake": True}
    return {
        "model_type": "diffusion_cond",
        "sample_size": sample_size,
        "sample_rate": 44100,
        "audio_channels": 2,
        "model": {
            "pretransform": {
                "type": "autoencoder",
                "iterate_batch": True,
                "config": {
                    "encoder": {"type": "oobleck", "config": {**oobleck, "in_channels": 2, "latent_dim": 2 * latent_dim}},
                    "decoder": {"type": "oobleck", "config": {**oobleck, "out_channels": 2, "latent_dim": latent_dim,
                                                              "final_tanh": False}},
                    "bottleneck": {"type": "vae"},
                    "latent_dim": latent_dim,
                    "downsampling_ratio": 2048,
                    "io_channels": 2,
                },
            },
            "conditioning": {
                "configs": [
                    {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base", "max_length": 64}},
                    {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 256}},
                ],
                "cond_dim": cond_dim,
            },
            "diffusion": {
                "cross_attention_cond_ids": ["prompt", "seconds_total"],
                "global_cond_ids": ["seconds_total"],
                "diffusion_objective": "rf_denoiser",
                "type": "dit",
                "config": {
                    "io_channels": latent_dim, "embed_dim": embed_dim, "depth": depth, "num_heads": num_heads,
                    "cond_token_dim": cond_dim, "global_cond_dim": cond_dim, "project_cond_tokens": True,
                    "transformer_type": "continuous_transformer", "attn_kwargs": {"qk_norm": "ln"},
                },
            },
            "io_channels": latent_dim,
        },
    }


def random_state_dict(config: dict[str, Any], *, seed: int = 0, std: float = 0.05) -> dict[str, torch.Tensor]:
    """Random weights for `config` in the published layout (weight_g/weight_v VAE convs)."""
    net = SAONet(parse_config(config))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("alpha", "beta")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif name.endswith(("gamma", "norm.weight")):
                p.copy_(1 + torch.randn(p.shape, generator=gen) * 0.1)
            else:
                # Unit-gain-ish init keeps the random VAE's output near full scale instead of growing per layer.
                fan_in = p[0].numel() if p.dim() > 1 else 1
                gain = 0.5 if name.startswith("pretransform.") else 1.0
                p.copy_(torch.randn(p.shape, generator=gen) * (std if p.dim() < 2 else gain * fan_in**-0.5))
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    return unfold_weight_norm(state, "pretransform.")


def write_demo_checkpoint(folder: Path, *, seed: int = 0, config: dict[str, Any] | None = None) -> Path:
    """model_config.json + model.safetensors (+ a marker) in `folder`; idempotent for the same seed and config."""
    from safetensors.torch import save_file

    folder = Path(folder)
    config = config or tiny_config()
    marker = {"seed": seed, "config": config}
    if (folder / DEMO_MARKER).exists() and json.loads((folder / DEMO_MARKER).read_text()) == marker:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    save_file(random_state_dict(config, seed=seed), str(folder / "model.safetensors"))
    (folder / "model_config.json").write_text(json.dumps(config, indent=2))
    (folder / DEMO_MARKER).write_text(json.dumps(marker))
    return folder


def install_demo(settings: Settings) -> str:
    """Tiny SAO-small at LOCAL_MODELS_DIR/stabilityai/stable-audio-open-small plus the tiny T5 at .../t5-base."""
    from garycommon.textenc import write_tiny_t5

    if settings.local_models_dir is None:
        raise ValueError("demo models need LOCAL_MODELS_DIR (settings.local_models_dir) to be set")
    write_tiny_t5(settings.local_models_dir / "t5-base")
    write_demo_checkpoint(settings.local_models_dir / DEFAULT_MODEL)
    return DEFAULT_MODEL
