"""Safe loading of audiocraft-format MusicGen checkpoints and parsing of the `xp.cfg` they carry.

A published MusicGen repo holds two pickles: `state_dict.bin` (the LM: `xp.cfg` YAML + `best_state`) and
`compression_state_dict.bin` (EnCodec: `xp.cfg` + `best_state`). Both are read with `torch.load(weights_only=True)`,
whose restricted unpickler only rebuilds tensors, plain containers and the OmegaConf types older exports pickled;
anything else (a pickle that would run code) is refused with UNSAFE_CHECKPOINT instead of being executed.
The architecture is read from the config, never assumed, so fine-tunes and other sizes load through the same code.
"""

from __future__ import annotations

import logging
import pickle
import typing
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from garycommon.errors import ErrorCode, ModelLoadError
from garycommon.safeconfig import plain_config
from garycommon.textenc import T5_DIMS

log = logging.getLogger(__name__)
LM_FILE = "state_dict.bin"
COMPRESSION_FILE = "compression_state_dict.bin"


def _omegaconf_globals() -> list[Any]:
    """OmegaConf classes a pickled DictConfig needs: data containers only, none of them runs code on load."""
    import omegaconf
    from omegaconf import base, nodes

    names = ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "EnumNode", "BytesNode", "PathNode")
    return [
        omegaconf.DictConfig, omegaconf.ListConfig, base.ContainerMetadata, base.Metadata,
        *(getattr(nodes, n) for n in names if hasattr(nodes, n)),
        typing.Any, dict, list, OrderedDict, defaultdict, int, str, float, bool, type(None),
    ]


def load_pickle(path: Path) -> dict[str, Any]:
    """`torch.load` under the weights-only unpickler; refuse (never run) anything beyond tensors and configs."""
    try:
        with torch.serialization.safe_globals(_omegaconf_globals()):
            pkg = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            ErrorCode.UNSAFE_CHECKPOINT,
            f"{path.name} contains objects beyond tensors and configs; refusing to unpickle it ({str(exc)[:300]})",
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, f"could not read {path}: {exc}") from exc
    if not isinstance(pkg, dict):
        raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, f"{path.name} is not an audiocraft checkpoint (not a dict)")
    return pkg


def config_dict(pkg: dict[str, Any], what: str) -> dict[str, Any]:
    """`xp.cfg` (YAML string, or a pickled DictConfig in older exports) as a resolved plain dict."""
    raw = pkg.get("xp.cfg")
    if raw is None:
        raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, f"{what} has no xp.cfg: not an audiocraft export")
    return plain_config(raw, what)  # resolvers off: a hub config never reads this server's environment


def _unsupported(what: str, *values: Any) -> ModelLoadError:
    """The client hears which part is unsupported, never the config's value (it may be anything the repo's author
    wrote); the operator finds the value in the log."""
    if values:
        log.warning("unsupported MusicGen checkpoint: %s: %s", what, ", ".join(repr(v)[:200] for v in values))
    return ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, f"unsupported MusicGen checkpoint: {what}"
                          + (" (the server log has the value)" if values else ""))


@dataclass(frozen=True)
class SeanetConfig:
    channels: int
    dimension: int
    n_filters: int
    n_residual_layers: int
    ratios: tuple[int, ...]
    activation: str
    activation_params: dict[str, Any]
    kernel_size: int
    last_kernel_size: int
    residual_kernel_size: int
    dilation_base: int
    causal: bool
    pad_mode: str
    true_skip: bool
    compress: int
    lstm: int
    final_activation: str | None = None
    final_activation_params: dict[str, Any] = field(default_factory=dict)
    trim_right_ratio: float = 1.0


@dataclass(frozen=True)
class CompressionConfig:
    sample_rate: int
    channels: int
    encoder: SeanetConfig
    decoder: SeanetConfig
    n_q: int
    bins: int
    codebook_dim: int | None
    renormalize: bool

    @property
    def hop_length(self) -> int:
        out = 1
        for r in self.decoder.ratios:
            out *= r
        return out

    @property
    def frame_rate(self) -> int:
        return self.sample_rate // self.hop_length


def compression_config(cfg: dict[str, Any]) -> CompressionConfig:
    if cfg.get("compression_model", "encodec") != "encodec":
        raise _unsupported("compression model", cfg.get('compression_model'))
    enc = dict(cfg["encodec"])
    if enc.get("autoencoder", "seanet") != "seanet" or enc.get("quantizer", "rvq") != "rvq":
        raise _unsupported("EnCodec without SEANet + RVQ")
    seanet = dict(cfg["seanet"])
    enc_over = seanet.pop("encoder", None) or {}
    dec_over = seanet.pop("decoder", None) or {}
    if seanet.get("norm", "weight_norm") not in ("weight_norm", "none"):
        raise _unsupported("SEANet norm", seanet.get('norm'))

    def build(over: dict[str, Any]) -> SeanetConfig:
        merged = {**seanet, **over}
        return SeanetConfig(
            channels=int(merged.get("channels", enc.get("channels", 1))),
            dimension=int(merged["dimension"]),
            n_filters=int(merged["n_filters"]),
            n_residual_layers=int(merged["n_residual_layers"]),
            ratios=tuple(int(r) for r in merged["ratios"]),
            activation=str(merged.get("activation", "ELU")),
            activation_params=dict(merged.get("activation_params") or {}),
            kernel_size=int(merged.get("kernel_size", 7)),
            last_kernel_size=int(merged.get("last_kernel_size", 7)),
            residual_kernel_size=int(merged.get("residual_kernel_size", 3)),
            dilation_base=int(merged.get("dilation_base", 2)),
            causal=bool(merged.get("causal", False)),
            pad_mode=str(merged.get("pad_mode", "constant")),
            true_skip=bool(merged.get("true_skip", True)),
            compress=int(merged.get("compress", 2)),
            lstm=int(merged.get("lstm", 0)),
            final_activation=merged.get("final_activation"),
            final_activation_params=dict(merged.get("final_activation_params") or {}),
            trim_right_ratio=float(merged.get("trim_right_ratio", 1.0)),
        )

    rvq = dict(cfg["rvq"])
    return CompressionConfig(
        sample_rate=int(enc.get("sample_rate", cfg.get("sample_rate", 32000))),
        channels=int(enc.get("channels", cfg.get("channels", 1))),
        encoder=build(enc_over),
        decoder=build(dec_over),
        n_q=int(rvq["n_q"]),
        bins=int(rvq["bins"]),
        codebook_dim=rvq.get("codebook_dim"),
        renormalize=bool(enc.get("renormalize", False)),
    )


@dataclass(frozen=True)
class LMConfig:
    dim: int
    num_heads: int
    num_layers: int
    hidden_scale: float
    n_q: int
    card: int
    delays: tuple[int, ...]
    activation: str
    norm_first: bool
    bias_ff: bool
    bias_attn: bool
    bias_proj: bool
    layer_scale: bool
    max_period: float
    positional_scale: float
    cross_attention: bool
    t5_name: str | None
    t5_dim: int
    cross_attention_pos_emb: bool
    cross_attention_pos_emb_scale: float
    cfg_coef: float
    segment_duration: float
    stereo_interleaved: bool
    compression_n_q: int | None

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    @property
    def ffn_dim(self) -> int:
        return int(self.hidden_scale * self.dim)


def lm_config(cfg: dict[str, Any]) -> LMConfig:
    """Parse the LM part of `xp.cfg`; anything this engine cannot reproduce exactly is refused by name."""
    if cfg.get("lm_model", "transformer_lm") != "transformer_lm":
        raise _unsupported("lm_model", cfg.get('lm_model'))
    tlm = dict(cfg["transformer_lm"])
    n_q = int(tlm["n_q"])
    pattern = dict(cfg.get("codebooks_pattern") or {})
    modeling = pattern.get("modeling") or tlm.get("q_modeling")
    if modeling == "delay":
        delay = dict(pattern.get("delay") or {})
        delays = tuple(int(d) for d in (delay.get("delays") or range(n_q)))
        if delay.get("flatten_first", 0) or delay.get("empty_initial", 0):
            raise _unsupported("delay pattern with flatten_first/empty_initial")
    elif modeling == "parallel":
        delays = (0,) * n_q
    else:
        raise _unsupported("codebooks pattern", modeling)
    if len(delays) != n_q or list(delays) != sorted(delays):
        raise _unsupported("delays for this number of codebooks", delays, n_q)
    if tlm.get("positional_embedding", "sin") != "sin":
        raise _unsupported("positional embedding", tlm.get('positional_embedding'))
    for flag in ("qk_layer_norm", "qk_layer_norm_cross"):
        if tlm.get(flag):
            raise _unsupported(flag)
    if int(tlm.get("kv_repeat", 1)) != 1 or tlm.get("past_context") is not None or not tlm.get("causal", True):
        raise _unsupported("kv_repeat/past_context/non-causal LM")
    if tlm.get("norm", "layer_norm") != "layer_norm":
        raise _unsupported("norm", tlm.get('norm'))
    activation = str(tlm.get("activation", "gelu"))
    if activation not in ("gelu", "relu"):
        raise _unsupported("activation", activation)

    fuser = dict(cfg.get("fuser") or {})
    for op in ("sum", "prepend", "input_interpolate"):
        if fuser.get(op):
            raise _unsupported("conditions fused by: only text cross-attention is supported", op, fuser[op])
    cross = list(fuser.get("cross") or [])
    conditioners = dict(cfg.get("conditioners") or {})
    t5_name: str | None = None
    for name, cond in conditioners.items():
        if name == "args":
            continue
        model = cond.get("model")
        if model != "t5" or name != "description":
            raise _unsupported("conditioner: only the T5 description conditioner is supported", name, model)
        t5 = dict(cond["t5"])
        if t5.get("normalize_text"):
            raise _unsupported("T5 normalize_text")
        t5_name = str(t5["name"])
    if cross and cross != ["description"]:
        raise _unsupported("cross-attention conditions", cross)
    if t5_name is not None and t5_name not in T5_DIMS:
        raise _unsupported("text encoder", t5_name)

    stereo = dict(cfg.get("interleave_stereo_codebooks") or {})
    if stereo.get("use") and stereo.get("per_timestep"):
        raise _unsupported("per-timestep stereo interleaving")
    cfg_section = dict(cfg.get("classifier_free_guidance") or {})
    return LMConfig(
        dim=int(tlm["dim"]),
        num_heads=int(tlm["num_heads"]),
        num_layers=int(tlm["num_layers"]),
        hidden_scale=float(tlm.get("hidden_scale", 4)),
        n_q=n_q,
        card=int(tlm["card"]),
        delays=delays,
        activation=activation,
        norm_first=bool(tlm.get("norm_first", False)),
        bias_ff=bool(tlm.get("bias_ff", True)),
        bias_attn=bool(tlm.get("bias_attn", True)),
        bias_proj=bool(tlm.get("bias_proj", True)),
        layer_scale=tlm.get("layer_scale") is not None,
        max_period=float(tlm.get("max_period", 10_000)),
        positional_scale=float(tlm.get("positional_scale", 1.0)),
        cross_attention=bool(cross) or bool(tlm.get("cross_attention", False)),
        t5_name=t5_name,
        t5_dim=T5_DIMS.get(t5_name or "", 0),
        cross_attention_pos_emb=bool(fuser.get("cross_attention_pos_emb", False)),
        cross_attention_pos_emb_scale=float(fuser.get("cross_attention_pos_emb_scale", 1.0)),
        cfg_coef=float(cfg_section.get("inference_coef", 3.0)),
        segment_duration=float((cfg.get("dataset") or {}).get("segment_duration", 30.0)),
        stereo_interleaved=bool(stereo.get("use", False)),
        compression_n_q=cfg.get("compression_model_n_q"),
    )
