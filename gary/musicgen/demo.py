"""Tiny random MusicGen checkpoints in the published audiocraft layout, for demo mode and tests.

`state_dict.bin` and `compression_state_dict.bin` are written exactly as audiocraft's exporter writes them (an
`xp.cfg` YAML with Hydra-style interpolations, `best_state` with weight-norm pairs and codebook buffers), so the same
loader that reads a hub download reads these, and audiocraft itself can load them too (the parity tests do).
Sizes keep the real shapes that matter to the pipeline (32 kHz, hop 640 = 50 frames/s, 4 x 2048 codebooks, T5-base
width 768) and shrink the rest.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import yaml

from gary.catalog import size_of
from garycommon.safeconfig import plain_config
from garycommon.settings import Settings

from .checkpoint import COMPRESSION_FILE, LM_FILE, compression_config, lm_config
from .encodec import Encodec
from .lm import MusicGenLM

DEMO_SIZES: dict[str, dict[str, int]] = {
    "small": {"dim": 32, "num_heads": 2, "num_layers": 2},
    "medium": {"dim": 48, "num_heads": 3, "num_layers": 2},
    "large": {"dim": 64, "num_heads": 4, "num_layers": 3},
}


def lm_xp_cfg(*, dim: int, num_heads: int, num_layers: int, stereo: bool = False, t5_name: str = "t5-base",
              segment_duration: float = 30.0) -> dict[str, Any]:
    """An LM `xp.cfg` with the keys audiocraft's builders read (musicgen_lm.yaml + text2music.yaml defaults)."""
    n_q = 8 if stereo else 4
    delays = [0, 0, 1, 1, 2, 2, 3, 3] if stereo else [0, 1, 2, 3]
    cfg: dict[str, Any] = {
        "sample_rate": 32000,
        "channels": 2 if stereo else 1,
        "lm_model": "transformer_lm",
        "codebooks_pattern": {"modeling": "delay", "delay": {"delays": delays, "flatten_first": 0, "empty_initial": 0}},
        "transformer_lm": {
            "dim": dim, "num_heads": num_heads, "num_layers": num_layers, "hidden_scale": 4, "n_q": n_q, "card": 2048,
            "dropout": 0.0, "emb_lr": None, "activation": "gelu", "norm_first": True, "bias_ff": False,
            "bias_attn": False, "bias_proj": False, "past_context": None, "causal": True, "custom": False,
            "memory_efficient": True, "attention_as_float32": False, "layer_scale": None,
            "positional_embedding": "sin", "xpos": False, "checkpointing": "none", "weight_init": "gaussian",
            "depthwise_init": "current", "zero_bias_init": True, "norm": "layer_norm", "cross_attention": False,
            "qk_layer_norm": False, "qk_layer_norm_cross": False, "attention_dropout": None, "kv_repeat": 1,
            "two_step_cfg": False,
        },
        "classifier_free_guidance": {"training_dropout": 0.3, "inference_coef": 3.0},
        "attribute_dropout": {},
        "fuser": {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1, "sum": [], "prepend": [],
                  "cross": ["description"], "input_interpolate": []},
        "conditioners": {"description": {"model": "t5", "t5": {"name": t5_name, "finetune": False,
                                                              "word_dropout": 0.3, "normalize_text": False}}},
        "dataset": {"segment_duration": segment_duration},
    }
    if stereo:
        cfg["interleave_stereo_codebooks"] = {"use": True, "per_timestep": False}
    return cfg


def compression_xp_cfg(*, n_filters: int = 4, dimension: int = 16, lstm: int = 1) -> dict[str, Any]:
    """A 32 kHz mono EnCodec `xp.cfg` (encodec_large_nq4_s640 shape: ratios 8,5,4,4; 4 codebooks of 2048)."""
    return {
        "sample_rate": 32000,
        "channels": 1,
        "compression_model": "encodec",
        "encodec": {"autoencoder": "seanet", "quantizer": "rvq", "sample_rate": "${sample_rate}",
                    "channels": "${channels}", "causal": False, "renormalize": False},
        "seanet": {
            "dimension": dimension, "channels": "${channels}", "causal": "${encodec.causal}", "n_filters": n_filters,
            "n_residual_layers": 1, "ratios": [8, 5, 4, 4], "activation": "ELU", "activation_params": {"alpha": 1.0},
            "norm": "weight_norm", "norm_params": {}, "kernel_size": 7, "residual_kernel_size": 3,
            "last_kernel_size": 7, "dilation_base": 2, "pad_mode": "constant", "true_skip": True, "compress": 2,
            "lstm": lstm, "disable_norm_outer_blocks": 0,
            "decoder": {"trim_right_ratio": 1.0, "final_activation": None, "final_activation_params": None},
            "encoder": {},
        },
        "rvq": {"n_q": 4, "q_dropout": False, "bins": 2048, "decay": 0.99, "kmeans_init": True, "kmeans_iters": 50,
                "threshold_ema_dead_code": 2, "orthogonal_reg_weight": 0.0, "orthogonal_reg_active_codes_only": False},
    }


def _random_(module: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def random_lm_state(cfg: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """`best_state` of a random LM in audiocraft's key layout (incl. the T5 output projection)."""
    parsed = lm_config(cfg)
    gen = torch.Generator().manual_seed(seed)
    lm = MusicGenLM(parsed)
    _random_(lm, gen)
    state = {k: v.clone() for k, v in lm.state_dict().items()}
    proj_w = torch.randn(parsed.dim, parsed.t5_dim, generator=gen) / parsed.t5_dim ** 0.5
    state["condition_provider.conditioners.description.output_proj.weight"] = proj_w
    state["condition_provider.conditioners.description.output_proj.bias"] = 0.1 * torch.randn(parsed.dim, generator=gen)
    return state


def random_compression_state(cfg: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """`best_state` of a random EnCodec with weight-norm pairs and RVQ buffers, as training saves it."""
    parsed = compression_config(plain_config(cfg, "demo EnCodec"))  # as a hub config is read: resolvers off
    gen = torch.Generator().manual_seed(seed)
    model = Encodec(parsed)
    for name, p in model.named_parameters():
        with torch.no_grad():
            if name.endswith("weight") and p.dim() == 3:
                fan_in = p.shape[1] * p.shape[2]
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.endswith(".weight") and value.dim() == 3:  # every SEANet conv carries weight_norm
            base = key[: -len(".weight")]
            g = value.flatten(1).norm(dim=1).view(-1, 1, 1) * (1.0 + 0.1 * torch.rand(value.shape[0], 1, 1, generator=gen))
            state[base + ".weight_g"] = g
            state[base + ".weight_v"] = value.clone()
        elif key.endswith("_codebook.embed"):
            embed = torch.randn(value.shape, generator=gen)
            prefix = key[: -len("embed")]
            state[prefix + "inited"] = torch.tensor([1.0])
            state[prefix + "cluster_size"] = torch.ones(value.shape[0])
            state[key] = embed
            state[prefix + "embed_avg"] = embed.clone()
        else:
            state[key] = value.clone()
    return state


def save_checkpoint(folder: Path, lm_cfg: dict[str, Any], comp_cfg: dict[str, Any], seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lm_pkg = {"best_state": random_lm_state(lm_cfg, seed), "xp.cfg": yaml.safe_dump(lm_cfg), "version": "1.3.0",
              "exported": True}
    comp_pkg = {"best_state": random_compression_state(comp_cfg, seed + 1), "xp.cfg": yaml.safe_dump(comp_cfg),
                "version": "1.3.0", "exported": True}
    torch.save(comp_pkg, folder / COMPRESSION_FILE)
    torch.save(lm_pkg, folder / LM_FILE)
    return folder


def write_demo_checkpoint(folder: Path, *, size: str = "small", stereo: bool = False, seed: int = 0) -> Path:
    """Write a tiny random MusicGen of the given size class into `folder` (idempotent for the same arguments)."""
    folder = Path(folder)
    marker = folder / "demo_checkpoint.json"
    spec = {"size": size, "stereo": stereo, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == spec and (folder / LM_FILE).exists():
        return folder
    save_checkpoint(folder, lm_xp_cfg(**DEMO_SIZES[size], stereo=stereo), compression_xp_cfg(), seed)
    marker.write_text(json.dumps(spec))
    return folder


def demo_root(settings: Settings) -> Path:
    """Where the demo checkpoints live (`Settings.demo_models_dir`, shared with jerry, terry and `gary-stack up`)."""
    return settings.demo_models_dir


def install_demo(settings: Settings, names: Iterable[str]) -> list[str]:
    """Tiny checkpoints for each hub name at <demo_root>/<owner>/<name>, sized as the catalogue says (gary.catalog
    .size_of), plus the tiny T5 at <demo_root>/t5-base."""
    from garycommon.textenc import write_tiny_t5

    root = demo_root(settings)
    write_tiny_t5(root / "t5-base")
    out = []
    for name in names:
        stereo = "stereo" in name.lower()
        write_demo_checkpoint(root / name, size=size_of(name), stereo=stereo, seed=zlib.crc32(name.encode()) % 10_000)
        out.append(str(root / name))
    return out
