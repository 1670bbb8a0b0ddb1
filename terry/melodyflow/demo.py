"""Tiny random MelodyFlow checkpoints in the published file layout, for tests and `--demo` runs.

The files are what `facebook/melodyflow-t24-30secs` ships — `state_dict.bin` and `compression_state_dict.bin`, each a
torch pickle `{"xp.cfg": OmegaConf tree, "best_state": state dict}` — with the same config keys and state-dict keys,
only narrower/shallower, so `MelodyFlowEngine.load` reads them through the exact code path of the real weights. The
codec keeps the real 48 kHz stereo rate and [8, 8, 6, 5] hop, hence the real 25 frames/s and 750-frame window.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from garycommon.settings import Settings

from .checkpoint import CODEC_FILE, DIT_FILE, codec_config, dit_config
from .codec import SEANetVAE
from .dit import FlowDiT
from .engine import DEMO_MARKER

REPO_ID = "facebook/melodyflow-t24-30secs"
DEMO_LAYOUT = "dit-4x32"  # in the folder's marker: a demo folder written with other sizes is rewritten

# The published DiT's config (the fields FlowModel/StreamingTransformer read), per the fork and audiocraft.cpp's docs.
REAL_DIT_CFG: dict[str, Any] = {
    "transformer_lm": {
        "dim": 1536, "num_heads": 24, "num_layers": 24, "hidden_scale": 4, "latent_dim": 128,
        "norm": "layer_norm", "norm_first": True, "bias_proj": False, "bias_ff": False, "bias_attn": False,
        "positional_embedding": "rope", "max_period": 10000, "activation": "gelu", "skip_connections": True,
        "add_zero_attn": True, "custom": True, "memory_efficient": True, "causal": False, "dropout": 0.0,
        "layer_scale": None, "cross_attention": True,
    },
    "conditioners": {"description": {"model": "t5", "t5": {"name": "t5-base", "finetune": False, "word_dropout": 0.0,
                                                           "normalize_text": False}}},
    "fuser": {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1, "sum": [], "prepend": [],
              "cross": ["description"], "input_interpolate": []},
    "classifier_free_guidance": {"training_dropout": 0.2, "inference_coef": 3.0},
    "dataset": {"segment_duration": 30},
    "sample_rate": 48000,
    "channels": 2,
}

REAL_CODEC_CFG: dict[str, Any] = {
    "compression_model": "encodec",
    "sample_rate": 48000,
    "channels": 2,
    "encodec": {"autoencoder": "seanet", "quantizer": "no_quant", "sample_rate": 48000, "channels": 2, "causal": False,
                "renormalize": False},
    "seanet": {
        "dimension": 128, "channels": 2, "causal": False, "n_filters": 64, "n_residual_layers": 1,
        "ratios": [8, 8, 6, 5], "activation": "snake", "activation_params": {}, "norm": "weight_norm", "norm_params": {},
        "kernel_size": 7, "residual_kernel_size": 3, "last_kernel_size": 7, "dilation_base": 2, "pad_mode": "reflect",
        "true_skip": True, "compress": 2, "lstm": 2, "disable_norm_outer_blocks": 0,
        "encoder": {"dimension": 256}, "decoder": {"trim_right_ratio": 1.0, "final_activation": None},
    },
    "no_quant": {},
}


def tiny_configs() -> tuple[dict[str, Any], dict[str, Any]]:
    """The published configs shrunk: 8-layer 64-wide DiT (3 skips, so the odd skip order shows), 32-dim latent,
    4-filter codec at the real rate and hop."""
    dit = copy.deepcopy(REAL_DIT_CFG)
    dit["transformer_lm"].update(dim=64, num_heads=4, num_layers=8, latent_dim=32)
    dit[DEMO_MARKER] = True
    codec = copy.deepcopy(REAL_CODEC_CFG)
    codec["seanet"].update(dimension=32, n_filters=4, encoder={"dimension": 64})
    codec[DEMO_MARKER] = True
    return dit, codec


def demo_configs() -> tuple[dict[str, Any], dict[str, Any]]:
    """What `--demo` serves: the tiny configs at half the DiT width and depth (4 layers, 32 wide, one skip), so a
    transform of a minute of audio stays a few seconds on a 2-core CPU next to the other demo services."""
    dit, codec = tiny_configs()
    dit["transformer_lm"].update(dim=32, num_layers=4)
    return dit, codec


def random_dit(cfg: dict[str, Any], seed: int = 0) -> FlowDiT:
    """A FlowDiT with small random weights (trained-like scales keep the flow finite) and bf16-rounded RoPE freqs."""
    model = FlowDiT(dit_config(cfg))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight", "norm_cross.weight", "out_norm.weight")):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
        model.latent_mean.copy_(torch.randn(model.latent_mean.shape, generator=gen) * 0.1)
        model.latent_std.copy_(1.0 + torch.rand(model.latent_std.shape, generator=gen))
        rope = model.transformer.rope.frequencies
        rope.copy_(rope.to(torch.bfloat16).float())
    return model


def random_codec(cfg: dict[str, Any], seed: int = 0) -> SEANetVAE:
    torch.manual_seed(seed)
    return SEANetVAE(codec_config(cfg))


def _save(path: Path, cfg: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    from omegaconf import OmegaConf

    torch.save({"xp.cfg": OmegaConf.create(cfg), "best_state": {k: v.detach().clone() for k, v in state.items()}}, path)


def write_demo_checkpoint(folder: Path, *, seed: int = 0) -> Path:
    """Write tiny random `state_dict.bin` + `compression_state_dict.bin` into `folder` (idempotent per seed)."""
    folder = Path(folder)
    marker = folder / "demo_seed.txt"
    stamp = f"{seed} {DEMO_LAYOUT}"
    if marker.exists() and marker.read_text() == stamp and (folder / DIT_FILE).exists() and (folder / CODEC_FILE).exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    dit_cfg, codec_cfg = demo_configs()
    _save(folder / DIT_FILE, dit_cfg, random_dit(dit_cfg, seed).state_dict())
    _save(folder / CODEC_FILE, codec_cfg, random_codec(codec_cfg, seed).state_dict())
    marker.write_text(stamp)
    return folder


def install_demo(settings: Settings) -> str:
    """Write the demo checkpoint at LOCAL_MODELS_DIR/facebook/melodyflow-t24-30secs and a tiny T5 at .../t5-base."""
    from garycommon.textenc import write_tiny_t5

    if settings.local_models_dir is None:
        raise ValueError("demo models need LOCAL_MODELS_DIR (settings.local_models_dir) to be set")
    root = Path(settings.local_models_dir)
    write_tiny_t5(root / "t5-base")
    return str(write_demo_checkpoint(root / REPO_ID))
