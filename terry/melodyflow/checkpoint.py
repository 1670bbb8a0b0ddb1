"""Reading MelodyFlow's two audiocraft pickles safely, and the key/shape layout they must have.

`facebook/melodyflow-t24-30secs` ships `state_dict.bin` (flow DiT) and `compression_state_dict.bin` (VAE), each a torch
pickle `{"xp.cfg": <OmegaConf tree>, "best_state": <state dict>}`. They are opened with `weights_only=True` and an
allow-list of the OmegaConf container classes the config needs, so a hostile pickle cannot run code.

The expected key/shape lists below are generated from the config alone. Their source is the module tree of the fork the
checkpoint was trained with (betweentwomidnights/melodyflow @ 4c1315a: `models/flow.py` FlowModel,
`modules/transformer.py` StreamingTransformer with `custom=True`, `add_zero_attn`, `skip_connections`,
`modules/rope.py`, `modules/conditioners.py` T5Conditioner, `modules/seanet.py` + `modules/conv.py` with
`torch.nn.utils.parametrizations.weight_norm`, `modules/lstm.py`). Cross-checked against the public converter of the
real files (betweentwomidnights/audiocraft.cpp `tools/convert_melodyflow_dit.py` / `convert_seanet.py`, which consume
every source tensor): the DiT holds 334 tensors (310 + one shared RoPE buffer repeated under each of the 24 layers) and
962,425,632 parameters; the VAE converts to 120 tensors / 59,660,354 parameters. `tests/terry_melodyflow` pins both counts.
"""

from __future__ import annotations

import logging
import math
import typing as tp
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from garycommon.errors import ErrorCode, ModelLoadError
from garycommon.safeconfig import plain_config
from garycommon.textenc import T5_DIMS

log = logging.getLogger(__name__)

DIT_FILE = "state_dict.bin"
CODEC_FILE = "compression_state_dict.bin"


def _safe_globals() -> list[Any]:
    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode

    return [DictConfig, ListConfig, AnyNode, Metadata, ContainerMetadata, defaultdict, dict, list, int, tp.Any]


def load_package(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(plain-dict config, state dict) of one audiocraft checkpoint, unpickled weights-only."""
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            pkg = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ModelLoadError(ErrorCode.MODEL_NOT_FOUND, f"{path} does not exist") from exc
    except Exception as exc:  # noqa: BLE001 - UnpicklingError and friends: one clear message
        raise ModelLoadError(
            ErrorCode.UNSAFE_CHECKPOINT, f"{path.name} could not be read as a weights-only audiocraft checkpoint: {exc}"
        ) from exc
    if not isinstance(pkg, dict) or "best_state" not in pkg or "xp.cfg" not in pkg:
        raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, f"{path.name} is not an audiocraft package (xp.cfg + best_state)")
    cfg = plain_config(pkg["xp.cfg"], path.name)  # resolvers off: a hub config never reads this server's environment
    return cfg, pkg["best_state"]


def _get(cfg: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return default if node is None else node


@dataclass(frozen=True)
class DiTConfig:
    """What the flow DiT's shape and behaviour depend on, read from `xp.cfg` (constructor defaults where absent)."""

    dim: int = 1536
    num_heads: int = 24
    num_layers: int = 24
    hidden_scale: int = 4
    latent_dim: int = 128
    cond_dim: int = 768
    max_period: float = 10000.0
    cfg_coef: float = 4.0  # FlowModel.__init__ default; cfg's classifier_free_guidance.inference_coef is never read
    segment_duration: float = 30.0
    t5_name: str = "t5-base"

    @property
    def ffn_dim(self) -> int:
        return self.hidden_scale * self.dim

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def num_skips(self) -> int:
        return (self.num_layers - 1) // 2


def dit_config(cfg: dict[str, Any]) -> DiTConfig:
    """Validate that `xp.cfg` describes the architecture we implement, and read its sizes."""
    lm = _get(cfg, "transformer_lm", {})
    expected = {"norm": "layer_norm", "norm_first": True, "positional_embedding": "rope", "skip_connections": True,
                "add_zero_attn": True, "activation": "gelu"}
    for key, value in expected.items():
        if lm.get(key) != value:  # the config's value goes to the log only, never to a client
            log.warning("unsupported MelodyFlow DiT: transformer_lm.%s=%s", key, repr(lm.get(key))[:200])
            raise ModelLoadError(
                ErrorCode.MODEL_LOAD_FAILED, f"unsupported MelodyFlow DiT: transformer_lm.{key} must be {value!r}"
            )
    for key in ("bias_proj", "bias_ff", "bias_attn", "causal", "xpos", "qk_layer_norm", "qk_layer_norm_cross"):
        if lm.get(key):
            raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, f"unsupported MelodyFlow DiT: transformer_lm.{key} is set")
    if lm.get("layer_scale") is not None:
        raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, "unsupported MelodyFlow DiT: layer_scale")
    if list(_get(cfg, "fuser.cross", [])) != ["description"]:
        raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, "MelodyFlow DiT must cross-attend to a single 'description'")
    t5_name = str(_get(cfg, "conditioners.description.t5.name", "t5-base"))
    return DiTConfig(
        dim=int(lm["dim"]),
        num_heads=int(lm["num_heads"]),
        num_layers=int(lm["num_layers"]),
        hidden_scale=int(lm.get("hidden_scale", 4)),
        latent_dim=int(lm.get("latent_dim", 128)),
        cond_dim=T5_DIMS.get(t5_name, 768),
        max_period=float(lm.get("max_period", 10000.0)),
        cfg_coef=float(lm.get("cfg_coef", 4.0)),
        segment_duration=float(_get(cfg, "dataset.segment_duration", 30.0)),
        t5_name=t5_name,
    )


@dataclass(frozen=True)
class CodecConfig:
    """The SEANet VAE's sizes (`xp.cfg.seanet` + `encodec`), defaults of the published 48 kHz stereo codec."""

    sample_rate: int = 48000
    channels: int = 2
    dimension: int = 128
    encoder_dimension: int = 256
    n_filters: int = 64
    n_residual_layers: int = 1
    ratios: tuple[int, ...] = (8, 8, 6, 5)
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_base: int = 2
    compress: int = 2
    lstm_layers: int = 2

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length


def codec_config(cfg: dict[str, Any]) -> CodecConfig:
    """Validate that `xp.cfg` describes the quantizer-free snake SEANet VAE, and read its sizes."""
    if _get(cfg, "compression_model", "encodec") != "encodec":
        raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, "MelodyFlow codec must be an encodec compression model")
    if _get(cfg, "encodec.quantizer", "no_quant") != "no_quant" or _get(cfg, "encodec.autoencoder", "seanet") != "seanet":
        raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, "MelodyFlow codec must be a seanet autoencoder without quantizer")
    if _get(cfg, "encodec.renormalize", False):
        raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, "renormalizing codecs are not supported")
    s = _get(cfg, "seanet", {})
    checks = {"activation": "snake", "norm": "weight_norm", "pad_mode": "reflect"}
    for key, value in checks.items():
        if s.get(key, value) != value:
            raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, f"unsupported MelodyFlow codec: seanet.{key}={s.get(key)!r}")
    if s.get("causal") or not s.get("true_skip", True) or s.get("disable_norm_outer_blocks", 0):
        raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, "unsupported MelodyFlow codec: causal / conv skip / unnormed blocks")
    if _get(cfg, "seanet.decoder.final_activation") is not None:
        raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, "unsupported MelodyFlow codec: decoder final activation")
    dimension = int(s["dimension"])
    return CodecConfig(
        sample_rate=int(_get(cfg, "encodec.sample_rate", _get(cfg, "sample_rate", 48000))),
        channels=int(s.get("channels", _get(cfg, "channels", 2))),
        dimension=dimension,
        encoder_dimension=int(_get(cfg, "seanet.encoder.dimension", dimension)),
        n_filters=int(s["n_filters"]),
        n_residual_layers=int(s["n_residual_layers"]),
        ratios=tuple(int(r) for r in s["ratios"]),
        kernel_size=int(s.get("kernel_size", 7)),
        last_kernel_size=int(s.get("last_kernel_size", 7)),
        residual_kernel_size=int(s.get("residual_kernel_size", 3)),
        dilation_base=int(s.get("dilation_base", 2)),
        compress=int(s.get("compress", 2)),
        lstm_layers=int(s.get("lstm", 0)),
    )


Shapes = dict[str, tuple[int, ...]]


def expected_dit_keys(c: DiTConfig) -> Shapes:
    """Every tensor of the published DiT `best_state`, derived from the config (see the module docstring's source)."""
    d, f, hd = c.dim, c.ffn_dim, c.head_dim
    keys: Shapes = {
        "latent_mean": (1, c.latent_dim, 1),
        "latent_std": (1, c.latent_dim, 1),
        "timestep_embedder.mlp.0.weight": (d, 256),
        "timestep_embedder.mlp.2.weight": (d, d),
        "in_proj.weight": (d, c.latent_dim),
        "out_proj.weight": (c.latent_dim, d),
        "out_norm.weight": (d,),
        "out_norm.bias": (d,),
        "condition_provider.conditioners.description.output_proj.weight": (d, c.cond_dim),
        "condition_provider.conditioners.description.output_proj.bias": (d,),
        "transformer.rope.frequencies": (hd // 2,),
    }
    for i in range(c.num_layers):
        p = f"transformer.layers.{i}."
        keys[p + "self_attn.rope.frequencies"] = (hd // 2,)  # the shared RotaryEmbedding, repeated per layer
        for attn in ("self_attn", "cross_attention"):
            keys[p + f"{attn}.in_proj_weight"] = (3 * d, d)
            keys[p + f"{attn}.out_proj.weight"] = (d, d)
        keys[p + "linear1.weight"] = (f, d)
        keys[p + "linear2.weight"] = (d, f)
        for norm in ("norm1", "norm2", "norm_cross"):
            keys[p + f"{norm}.weight"] = (d,)
            keys[p + f"{norm}.bias"] = (d,)
    for k in range(c.num_skips):
        keys[f"transformer.skip_projections.{k}.weight"] = (d, 2 * d)
    return keys


def expected_codec_keys(c: CodecConfig) -> Shapes:
    """Every tensor of the published VAE `best_state` (EncodecModel: encoder.model.N / decoder.model.N, weight-normed)."""
    keys: Shapes = {}

    def conv(prefix: str, cin: int, cout: int, k: int, transposed: bool = False) -> None:
        name = "convtr.convtr" if transposed else "conv.conv"
        weight = (cin, cout, k) if transposed else (cout, cin, k)
        keys[f"{prefix}.{name}.bias"] = (cout,)
        keys[f"{prefix}.{name}.parametrizations.weight.original0"] = (weight[0], 1, 1)
        keys[f"{prefix}.{name}.parametrizations.weight.original1"] = weight

    def snake(prefix: str, ch: int) -> None:
        keys[f"{prefix}.alpha"] = (1, ch, 1)

    def resblock(prefix: str, ch: int) -> None:
        hidden = ch // c.compress
        snake(f"{prefix}.block.0", ch)
        conv(f"{prefix}.block.1", ch, hidden, c.residual_kernel_size)
        snake(f"{prefix}.block.2", hidden)
        conv(f"{prefix}.block.3", hidden, ch, 1)

    def lstm(prefix: str, ch: int) -> None:
        for layer in range(c.lstm_layers):
            for kind in ("ih", "hh"):
                keys[f"{prefix}.lstm.weight_{kind}_l{layer}"] = (4 * ch, ch)
                keys[f"{prefix}.lstm.bias_{kind}_l{layer}"] = (4 * ch,)

    nf = c.n_filters
    idx = 0
    conv(f"encoder.model.{idx}", c.channels, nf, c.kernel_size)
    mult = 1
    for ratio in reversed(c.ratios):
        for _ in range(c.n_residual_layers):
            idx += 1
            resblock(f"encoder.model.{idx}", mult * nf)
        idx += 1
        snake(f"encoder.model.{idx}", mult * nf)
        idx += 1
        conv(f"encoder.model.{idx}", mult * nf, 2 * mult * nf, 2 * ratio)
        mult *= 2
    if c.lstm_layers:
        idx += 1
        lstm(f"encoder.model.{idx}", mult * nf)
    idx += 1
    snake(f"encoder.model.{idx}", mult * nf)
    idx += 1
    conv(f"encoder.model.{idx}", mult * nf, c.encoder_dimension, c.last_kernel_size)

    idx = 0
    conv(f"decoder.model.{idx}", c.dimension, mult * nf, c.kernel_size)
    if c.lstm_layers:
        idx += 1
        lstm(f"decoder.model.{idx}", mult * nf)
    for ratio in c.ratios:
        idx += 1
        snake(f"decoder.model.{idx}", mult * nf)
        idx += 1
        conv(f"decoder.model.{idx}", mult * nf, mult * nf // 2, 2 * ratio, transposed=True)
        for _ in range(c.n_residual_layers):
            idx += 1
            resblock(f"decoder.model.{idx}", mult * nf // 2)
        mult //= 2
    idx += 1
    snake(f"decoder.model.{idx}", nf)
    idx += 1
    conv(f"decoder.model.{idx}", nf, c.channels, c.last_kernel_size)
    return keys


def check_state(state: dict[str, torch.Tensor], expected: Shapes, what: str) -> None:
    """Refuse a checkpoint whose keys or shapes differ from the published layout, naming the first differences."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in expected if k in state and tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}")
        if wrong:
            parts.append(", ".join(f"{k}: {tuple(state[k].shape)} != {expected[k]}" for k in wrong[:5]))
        raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, f"{what} does not match the MelodyFlow layout: " + "; ".join(parts))
