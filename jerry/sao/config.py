"""Parse a stable-audio-tools `model_config.json` into the few numbers our engine needs.

The published file drives the architecture (so fine-tunes with other sizes load unchanged); options the engine does
not implement are rejected here with a clear message instead of producing wrong audio later.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from garycommon.errors import ErrorCode, ModelLoadError

log = logging.getLogger(__name__)


def _fail(message: str, *values: Any) -> ModelLoadError:
    """Clients hear which option is unsupported, never the config's value; the operator finds it in the log."""
    if values:
        log.warning("unsupported model_config.json: %s: %s", message, ", ".join(repr(v)[:200] for v in values))
    return ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, f"unsupported model_config.json: {message}"
                          + (" (the server log has the value)" if values else ""))


@dataclass(frozen=True)
class OobleckConfig:
    """One Oobleck encoder or decoder (snake activations, weight-normed convs)."""

    audio_channels: int
    channels: int
    c_mults: tuple[int, ...]
    strides: tuple[int, ...]
    latent_dim: int
    use_snake: bool
    final_tanh: bool = False


@dataclass(frozen=True)
class VAEConfig:
    encoder: OobleckConfig
    decoder: OobleckConfig
    latent_dim: int
    downsampling_ratio: int
    io_channels: int
    scale: float
    vae_bottleneck: bool
    soft_clip: bool


@dataclass(frozen=True)
class DiTConfig:
    io_channels: int
    embed_dim: int
    depth: int
    num_heads: int
    cond_token_dim: int
    global_cond_dim: int
    project_cond_tokens: bool
    project_global_cond: bool
    qk_norm: str

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


@dataclass(frozen=True)
class ConditionerConfig:
    id: str
    type: str  # "t5" | "number"
    t5_model_name: str = "t5-base"
    max_length: int = 128
    min_val: float = 0.0
    max_val: float = 1.0


@dataclass(frozen=True)
class SAOConfig:
    sample_rate: int
    sample_size: int
    audio_channels: int
    objective: str
    cond_dim: int
    conditioners: tuple[ConditionerConfig, ...]
    cross_attn_ids: tuple[str, ...]
    global_ids: tuple[str, ...]
    dit: DiTConfig
    vae: VAEConfig

    @property
    def latent_length(self) -> int:
        return self.sample_size // self.vae.downsampling_ratio

    @property
    def max_seconds(self) -> float:
        return self.sample_size / self.sample_rate

    def conditioner(self, cid: str) -> ConditionerConfig:
        for cond in self.conditioners:
            if cond.id == cid:
                return cond
        raise KeyError(cid)


_DIT_KEYS = {
    "io_channels", "embed_dim", "depth", "num_heads", "cond_token_dim", "global_cond_dim", "project_cond_tokens",
    "project_global_cond", "transformer_type", "attn_kwargs", "patch_size", "global_cond_type", "input_concat_dim",
    "prepend_cond_dim", "timestep_cond_type",
}
_DIT_DEFAULTS_ONLY = {"patch_size": 1, "global_cond_type": "prepend", "input_concat_dim": 0, "prepend_cond_dim": 0,
                      "timestep_cond_type": "global", "transformer_type": "continuous_transformer"}


def _oobleck(section: dict[str, Any], *, encoder: bool) -> OobleckConfig:
    if section.get("type") != "oobleck":
        raise _fail(f"autoencoder {'encoder' if encoder else 'decoder'} type (only 'oobleck')", section.get('type'))
    cfg = section.get("config", {})
    if cfg.get("antialias_activation") or cfg.get("use_nearest_upsample"):
        raise _fail("oobleck antialias_activation / use_nearest_upsample are not implemented")
    return OobleckConfig(
        audio_channels=int(cfg.get("in_channels" if encoder else "out_channels", 2)),
        channels=int(cfg.get("channels", 128)),
        c_mults=tuple(int(c) for c in cfg.get("c_mults", [1, 2, 4, 8])),
        strides=tuple(int(s) for s in cfg.get("strides", [2, 4, 8, 8])),
        latent_dim=int(cfg.get("latent_dim", 32)),
        use_snake=bool(cfg.get("use_snake", False)),
        final_tanh=bool(cfg.get("final_tanh", True)) if not encoder else False,
    )


def _vae(pre: dict[str, Any]) -> VAEConfig:
    if pre.get("type") != "autoencoder":
        raise _fail("pretransform type (only 'autoencoder')", pre.get('type'))
    if pre.get("chunked"):
        raise _fail("chunked pretransform decoding is not implemented")
    ae = pre.get("config", {})
    if ae.get("pretransform") is not None:
        raise _fail("nested pretransforms are not implemented")
    bottleneck = (ae.get("bottleneck") or {}).get("type")
    if bottleneck not in (None, "vae"):
        raise _fail("bottleneck (only 'vae')", bottleneck)
    enc, dec = _oobleck(ae["encoder"], encoder=True), _oobleck(ae["decoder"], encoder=False)
    return VAEConfig(
        encoder=enc, decoder=dec, latent_dim=int(ae["latent_dim"]), downsampling_ratio=int(ae["downsampling_ratio"]),
        io_channels=int(ae.get("io_channels", 2)), scale=float(pre.get("scale", 1.0)),
        vae_bottleneck=bottleneck == "vae", soft_clip=bool(ae["decoder"].get("soft_clip", False)),
    )


def _dit(diffusion: dict[str, Any]) -> DiTConfig:
    if diffusion.get("type") != "dit":
        raise _fail("diffusion type (only 'dit')", diffusion.get('type'))
    cfg = dict(diffusion.get("config", {}))
    unknown = set(cfg) - _DIT_KEYS
    if unknown:
        raise _fail("DiT options are not implemented", sorted(unknown))
    for key, default in _DIT_DEFAULTS_ONLY.items():
        if cfg.get(key, default) != default:
            raise _fail(f"DiT option {key} is not implemented (only {default!r})", cfg[key])
    attn = dict(cfg.get("attn_kwargs") or {})
    qk_norm = attn.pop("qk_norm", "none")
    if attn or qk_norm not in ("ln", "l2", "none"):
        raise _fail("attention options are not implemented", attn or {'qk_norm': qk_norm})
    return DiTConfig(
        io_channels=int(cfg.get("io_channels", 32)), embed_dim=int(cfg.get("embed_dim", 768)),
        depth=int(cfg.get("depth", 12)), num_heads=int(cfg.get("num_heads", 8)),
        cond_token_dim=int(cfg.get("cond_token_dim", 0)), global_cond_dim=int(cfg.get("global_cond_dim", 0)),
        project_cond_tokens=bool(cfg.get("project_cond_tokens", True)),
        project_global_cond=bool(cfg.get("project_global_cond", True)), qk_norm=qk_norm,
    )


def parse_config(raw: dict[str, Any]) -> SAOConfig:
    """Validate and flatten a `diffusion_cond` model config (stable-audio-tools layout)."""
    if raw.get("model_type") != "diffusion_cond":
        raise _fail("model_type (only 'diffusion_cond')", raw.get('model_type'))
    model = raw["model"]
    diffusion = model["diffusion"]
    objective = diffusion.get("diffusion_objective", "v")
    if objective not in ("rf_denoiser", "rectified_flow"):
        raise _fail("diffusion_objective (only rectified-flow models: rf_denoiser, rectified_flow)", objective)
    if diffusion.get("input_concat_ids") or diffusion.get("prepend_cond_ids") or diffusion.get("distribution_shift_options"):
        raise _fail("input_concat / prepend conditioning and distribution shift are not implemented")
    conditioning = model.get("conditioning") or {"configs": [], "cond_dim": 0}
    conds = []
    for item in conditioning["configs"]:
        kind, cfg = item["type"], item.get("config", {})
        if kind == "t5":
            conds.append(ConditionerConfig(item["id"], "t5", t5_model_name=cfg.get("t5_model_name", "t5-base"),
                                           max_length=int(cfg.get("max_length", 128))))
            if cfg.get("project_out"):
                raise _fail("T5 project_out is not implemented")
        elif kind == "number":
            conds.append(ConditionerConfig(item["id"], "number", min_val=float(cfg.get("min_val", 0)),
                                           max_val=float(cfg.get("max_val", 1))))
        else:
            raise _fail("conditioner type (only 't5' and 'number')", kind)
    out = SAOConfig(
        sample_rate=int(raw["sample_rate"]), sample_size=int(raw["sample_size"]),
        audio_channels=int(raw.get("audio_channels", 2)), objective=objective, cond_dim=int(conditioning["cond_dim"]),
        conditioners=tuple(conds), cross_attn_ids=tuple(diffusion.get("cross_attention_cond_ids", [])),
        global_ids=tuple(diffusion.get("global_cond_ids", [])), dit=_dit(diffusion), vae=_vae(model["pretransform"]),
    )
    ids = {c.id for c in out.conditioners}
    missing = [i for i in (*out.cross_attn_ids, *out.global_ids) if i not in ids]
    if missing:
        raise _fail("conditioning ids have no conditioner", missing)
    if len(out.global_ids) > 1 or any(out.conditioner(i).type != "number" for i in out.global_ids):
        raise _fail("only one number conditioner as global conditioning is implemented")
    if out.dit.io_channels != out.vae.latent_dim:
        raise _fail("DiT io_channels differ from the autoencoder latent_dim", out.dit.io_channels, out.vae.latent_dim)
    return out
