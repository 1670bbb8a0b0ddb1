"""The published checkpoint layout: key/shape lists generated from the config, strict loading, safe unpickling.

Source of the expected lists: `terry.melodyflow.checkpoint` (module docstring) — the fork's module tree, cross-checked
with audiocraft.cpp's converters of the real files, which report 334 DiT tensors / 962,425,632 parameters and
120 converted codec tensors / 59,660,354 parameters. Those published counts are pinned here for the real config.
"""

from __future__ import annotations

import math
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from garycommon.errors import ErrorCode, ModelLoadError
from garycommon.settings import Settings
from terry.melodyflow import MelodyFlowEngine
from terry.melodyflow.checkpoint import (
    CODEC_FILE,
    DIT_FILE,
    codec_config,
    dit_config,
    expected_codec_keys,
    expected_dit_keys,
    load_package,
)
from terry.melodyflow.codec import SEANetVAE
from terry.melodyflow.demo import REAL_CODEC_CFG, REAL_DIT_CFG, tiny_configs
from terry.melodyflow.dit import FlowDiT


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_real_dit_layout_matches_published_counts() -> None:
    cfg = dit_config(REAL_DIT_CFG)
    keys = expected_dit_keys(cfg)
    assert len(keys) == 334
    unique = {k: s for k, s in keys.items() if not k.endswith("self_attn.rope.frequencies")}
    assert sum(math.prod(s) for s in unique.values()) == 962_425_632
    with torch.device("meta"):
        model = FlowDiT(cfg)
    assert _shapes(model) == keys


def test_real_codec_layout_matches_published_counts() -> None:
    cfg = codec_config(REAL_CODEC_CFG)
    keys = expected_codec_keys(cfg)
    # the converter fuses weight norm (g, v -> w), sums the two LSTM biases and writes alpha + 1/alpha per snake
    tensors = params = 0
    for name, shape in keys.items():
        if name.endswith("original0") or "lstm.bias_hh" in name:
            continue
        count = 2 if name.endswith("alpha") else 1
        tensors += count
        params += count * math.prod(shape)
    assert (tensors, params) == (120, 59_660_354)
    assert cfg.hop_length == 1920 and cfg.frame_rate == 25 and cfg.sample_rate == 48000 and cfg.channels == 2
    with torch.device("meta"):
        model = SEANetVAE(cfg)
    assert _shapes(model) == keys


def test_demo_checkpoint_is_in_published_layout(mf_folder: Path) -> None:
    dit_cfg, dit_state = load_package(mf_folder / DIT_FILE)
    codec_cfg, codec_state = load_package(mf_folder / CODEC_FILE)
    assert {k: tuple(v.shape) for k, v in dit_state.items()} == expected_dit_keys(dit_config(dit_cfg))
    assert {k: tuple(v.shape) for k, v in codec_state.items()} == expected_codec_keys(codec_config(codec_cfg))
    freqs = dit_state["transformer.rope.frequencies"]
    assert torch.equal(freqs, freqs.to(torch.bfloat16).float()), "demo RoPE table is bf16-rounded like the real one"


def test_engine_keeps_stored_rope_frequencies(mf_engine: MelodyFlowEngine, mf_folder: Path) -> None:
    _, state = load_package(mf_folder / DIT_FILE)
    assert mf_engine.dit is not None
    loaded = mf_engine.dit.transformer.rope.frequencies.cpu()
    assert torch.equal(loaded, state["transformer.rope.frequencies"])
    analytic = 1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16))
    assert not torch.equal(loaded, analytic), "the stored (rounded) table must be used, not recomputed"


def _copy_with(src: Path, dst: Path, edit) -> Path:  # noqa: ANN001
    shutil.copytree(src, dst)
    pkg = torch.load(dst / DIT_FILE, weights_only=False)
    edit(pkg["best_state"])
    torch.save(pkg, dst / DIT_FILE)
    return dst


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda s: s.pop("transformer.skip_projections.0.weight"), "missing"),
        (lambda s: s.__setitem__("transformer.layers.0.self_attn.in_proj_bias", torch.zeros(192)), "unexpected"),
        (lambda s: s.__setitem__("in_proj.weight", torch.zeros(64, 31)), "in_proj.weight"),
    ],
)
def test_layout_mismatch_is_a_clear_load_error(mf_folder: Path, mf_settings: Settings, tmp_path: Path, edit, needle) -> None:  # noqa: ANN001
    folder = _copy_with(mf_folder, tmp_path / "bad", edit)
    with pytest.raises(ModelLoadError) as info:
        MelodyFlowEngine.load(str(folder), mf_settings, torch.device("cpu"))
    assert info.value.code == ErrorCode.MODEL_LOAD_FAILED
    assert needle in info.value.message


class _Evil:
    def __reduce__(self):  # noqa: ANN204
        return (print, ("pwned",))


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / DIT_FILE
    with path.open("wb") as fh:
        pickle.dump({"xp.cfg": {}, "best_state": {}, "x": _Evil()}, fh)
    with pytest.raises(ModelLoadError) as info:
        load_package(path)
    assert info.value.code == ErrorCode.UNSAFE_CHECKPOINT


def test_unsupported_architecture_is_refused() -> None:
    cfg, _ = tiny_configs()
    cfg["transformer_lm"]["add_zero_attn"] = False
    with pytest.raises(ModelLoadError, match="add_zero_attn"):
        dit_config(cfg)


def test_config_with_unresolvable_interpolation_still_loads(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    cfg, _ = tiny_configs()
    cfg["optim"] = {"lr": "${missing.key}"}  # training-only field pointing nowhere
    torch.save({"xp.cfg": OmegaConf.create(cfg), "best_state": {}}, tmp_path / DIT_FILE)
    loaded, state = load_package(tmp_path / DIT_FILE)
    assert state == {} and dit_config(loaded).num_layers == 8


def test_install_demo_needs_a_models_dir() -> None:
    from terry.melodyflow.demo import install_demo

    with pytest.raises(ValueError, match="LOCAL_MODELS_DIR"):
        install_demo(Settings(local_models_dir=None))
