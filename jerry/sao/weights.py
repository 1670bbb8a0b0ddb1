"""Checkpoint reading and key normalisation for SAO models and their fine-tunes.

Inference checkpoints (`model.safetensors`) use the keys `model.model.*` (DiT), `conditioner.conditioners.*` and
`pretransform.model.*` (VAE, weight-normed). Training checkpoints (`*.ckpt`) wrap them as `diffusion.*`, with EMA
weights of the DiT under `diffusion_ema.ema_model.*` — which correspond to `model.*` at inference (the original jerry
renamed them to `diffusion.model.*`, so fine-tunes silently kept their raw weights). Pickles are read with
`weights_only=True`: a checkpoint that needs arbitrary code to load is refused, never executed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from garycommon.errors import ErrorCode, ModelLoadError

log = logging.getLogger(__name__)

EMA_PREFIX = "diffusion_ema.ema_model."
# Constant buffers the checkpoint carries but our modules rebuild identically: never required.
_CONSTANT_SUFFIXES = (".beta", ".inv_freq")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a weights-only pickle (`state_dict` unwrapped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, f"could not read {path.name}: {exc}") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for non-weights content, RuntimeError for corrupt files
        raise ModelLoadError(
            ErrorCode.UNSAFE_CHECKPOINT,
            f"{path.name} is not a weights-only checkpoint (it would need arbitrary code to load): {exc}. "
            "Convert it to safetensors.",
        ) from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
        if not tensors:
            raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, f"{path.name} holds no state dict of tensors")
        obj = tensors
    return obj


def normalise_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map training / wrapped layouts onto inference keys; EMA weights of the DiT win over the raw ones."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        for wrapper in ("module.", "_orig_mod."):
            key = key.removeprefix(wrapper)
        out[key] = value
    has_ema = any(k.startswith(EMA_PREFIX) for k in out)
    result: dict[str, torch.Tensor] = {}
    for key, value in out.items():
        if key.startswith(EMA_PREFIX):
            result["model." + key[len(EMA_PREFIX):]] = value
        elif key.startswith("diffusion_ema."):
            continue  # EMA bookkeeping (step, initted, online copy)
        elif key.startswith("diffusion."):
            inner = key[len("diffusion."):]
            if has_ema and inner.startswith("model."):
                continue  # raw DiT weights: the EMA copy is what was meant for inference
            result[inner] = value
        else:
            result.setdefault(key, value)
    return result


def fold_weight_norm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace `weight_g`/`weight_v` (old API) or `parametrizations.weight.original0/1` pairs with plain weights."""
    out = dict(sd)
    pairs = [(k[: -len(".weight_g")], ".weight_g", ".weight_v") for k in sd if k.endswith(".weight_g")]
    pairs += [
        (k[: -len(".parametrizations.weight.original0")], ".parametrizations.weight.original0",
         ".parametrizations.weight.original1")
        for k in sd if k.endswith(".parametrizations.weight.original0")
    ]
    for stem, gname, vname in pairs:
        if stem + vname not in sd:
            continue
        g, v = out.pop(stem + gname).float(), out.pop(stem + vname).float()
        norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
        out[stem + ".weight"] = v * (g / norm)
    return out


def unfold_weight_norm(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Inverse of `fold_weight_norm` for conv weights under `prefix`: writes the published (weight_g/_v) layout."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.startswith(prefix) and key.endswith(".weight") and value.dim() == 3:
            stem = key[: -len(".weight")]
            out[stem + ".weight_g"] = value.flatten(1).norm(dim=1).view(-1, 1, 1).clone()
            out[stem + ".weight_v"] = value.clone()
        else:
            out[key] = value
    return out


@dataclass
class LoadReport:
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def coverage(self, prefix: str, model_keys: list[str]) -> float:
        wanted = [k for k in model_keys if k.startswith(prefix) and not k.endswith(_CONSTANT_SUFFIXES)]
        got = set(self.matched)
        return sum(k in got for k in wanted) / max(len(wanted), 1)


def apply_state_dict(module: nn.Module, sd: dict[str, torch.Tensor]) -> LoadReport:
    """Copy name+shape matches into `module` and report everything else (callers decide what is fatal)."""
    own = module.state_dict()
    report = LoadReport()
    with torch.no_grad():
        for key, value in sd.items():
            target = own.get(key)
            if target is None:
                report.unexpected.append(key)
            elif tuple(target.shape) != tuple(value.shape):
                report.mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(target.shape)}")
            else:
                target.copy_(value.to(target.dtype))
                report.matched.append(key)
    got = set(report.matched)
    report.missing = [k for k in own if k not in got and not k.endswith(_CONSTANT_SUFFIXES)]
    return report


def load_full(module: nn.Module, path: Path) -> LoadReport:
    """A complete model checkpoint: every weight must be present with the right shape."""
    report = apply_state_dict(module, fold_weight_norm(normalise_keys(read_state_dict(path))))
    if report.missing or report.mismatched:
        problems = report.mismatched[:5] + [f"missing {k}" for k in report.missing[:5]]
        raise ModelLoadError(
            ErrorCode.MODEL_LOAD_FAILED,
            f"{path.name} does not fit model_config.json ({len(report.missing)} missing, "
            f"{len(report.mismatched)} mismatched): {'; '.join(problems)}",
        )
    if report.unexpected:
        log.warning("%s: ignored %d unexpected keys, e.g. %s", path.name, len(report.unexpected), report.unexpected[:3])
    return report


def load_finetune(module: nn.Module, path: Path, *, min_coverage: float = 0.9) -> LoadReport:
    """Fine-tuned DiT (+ conditioner) weights over an already loaded base; the base VAE is kept."""
    sd = {k: v for k, v in fold_weight_norm(normalise_keys(read_state_dict(path))).items()
          if not k.startswith("pretransform.")}
    report = apply_state_dict(module, sd)
    model_keys = list(module.state_dict())
    coverage = report.coverage("model.", model_keys)
    if coverage < min_coverage or report.mismatched:
        raise ModelLoadError(
            ErrorCode.MODEL_LOAD_FAILED,
            f"{path.name} matches only {coverage:.0%} of the diffusion model's weights "
            f"({len(report.mismatched)} shape mismatches, {len(report.unexpected)} unknown keys, "
            f"e.g. {(report.mismatched or report.unexpected)[:3]}): wrong base config or not an SAO checkpoint",
        )
    return report
