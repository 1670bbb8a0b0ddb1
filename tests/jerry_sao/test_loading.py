"""Checkpoint loading: published layout, fine-tunes (EMA, prefixes, .ckpt), too-few-keys, unsafe pickles, allow-list."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from garycommon.errors import ErrorCode, ModelLoadError
from garycommon.settings import Settings
from jerry.models import check_loadable
from jerry.sao import DEFAULT_MODEL, SAOEngine, SAORequest
from jerry.sao.demo import install_demo, random_state_dict
from jerry.sao.weights import fold_weight_norm, normalise_keys


def _param(engine: SAOEngine, key: str) -> torch.Tensor:
    return engine.net.state_dict()[key]


DIT_KEY = "model.model.transformer.layers.0.self_attn.to_qkv.weight"
COND_KEY = "conditioner.conditioners.seconds_total.embedder.embedding.1.weight"
VAE_KEY = "pretransform.model.decoder.layers.0.weight"


def test_reference_layout_has_exactly_our_keys(reference: Any, small_state: dict[str, torch.Tensor]) -> None:
    """The published (stable-audio-tools) key/shape list equals what we write and load: nothing missing or extra."""
    ref = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in small_state.items()}
    assert ref == ours


def test_full_checkpoint_loads_every_key(engine: SAOEngine, small_state: dict[str, torch.Tensor]) -> None:
    folded = fold_weight_norm(small_state)
    own = engine.net.state_dict()
    assert set(own) == set(folded)
    for key in (DIT_KEY, COND_KEY, VAE_KEY):
        torch.testing.assert_close(own[key], folded[key])


def _finetune_dir(tmp_path: Path, small_config: dict[str, Any], state: dict[str, torch.Tensor], name: str) -> Path:
    folder = tmp_path / "ft"
    folder.mkdir(exist_ok=True)
    (folder / "base_model_config.json").write_text(json.dumps(small_config))
    if name.endswith(".safetensors"):
        save_file(state, str(folder / name))
    else:
        torch.save({"state_dict": state, "global_step": 10}, folder / name)
    return folder


def _training_layout(small_config: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A training checkpoint: raw DiT, a different EMA DiT, conditioner and an (ignored) VAE; plus the EMA source."""
    raw, ema, other_vae = (random_state_dict(small_config, seed=s) for s in (11, 12, 13))
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if key.startswith("pretransform."):
            state["diffusion." + key] = other_vae[key]
        else:
            state["diffusion." + key] = value
    for key, value in ema.items():
        if key.startswith("model."):
            state["diffusion_ema.ema_model." + key[len("model."):]] = value
    state["diffusion_ema.initted"] = torch.tensor(True)
    state["diffusion_ema.step"] = torch.tensor(100)
    return state, {**ema, **{k: v for k, v in raw.items() if k.startswith("conditioner.")}}


def test_finetune_ckpt_applies_ema_weights_and_keeps_base_vae(
    tmp_path: Path, small_config: dict[str, Any], small_state: dict[str, torch.Tensor], small_dir: Path,
    settings: Settings,
) -> None:
    state, expected = _training_layout(small_config)
    folder = _finetune_dir(tmp_path, small_config, state, "my_ft.ckpt")
    engine = SAOEngine.load(str(folder), settings, checkpoint="my_ft.ckpt", base=str(small_dir))
    torch.testing.assert_close(_param(engine, DIT_KEY), expected[DIT_KEY])  # EMA, not raw
    assert not torch.equal(_param(engine, DIT_KEY), state["diffusion." + DIT_KEY])
    torch.testing.assert_close(_param(engine, COND_KEY), expected[COND_KEY])
    torch.testing.assert_close(_param(engine, VAE_KEY), fold_weight_norm(small_state)[VAE_KEY])  # base VAE
    assert engine.generate([SAORequest(prompt="x", steps=2, seed=1)])[0].audio.shape == (2, small_config["sample_size"])


def test_finetune_without_ema_uses_raw_weights_and_strips_wrappers(
    tmp_path: Path, small_config: dict[str, Any], small_dir: Path, settings: Settings
) -> None:
    raw = random_state_dict(small_config, seed=21)
    state = {"module." + k: v for k, v in raw.items() if not k.startswith("pretransform.")}
    folder = _finetune_dir(tmp_path, small_config, state, "plain.safetensors")
    engine = SAOEngine.load(str(folder), settings, checkpoint="plain.safetensors", base=str(small_dir))
    torch.testing.assert_close(_param(engine, DIT_KEY), raw[DIT_KEY])


def test_normalise_keys_prefers_ema() -> None:
    one, two = torch.ones(1), torch.zeros(1)
    out = normalise_keys({"diffusion.model.model.w": one, "diffusion_ema.ema_model.model.w": two,
                          "diffusion.conditioner.c": one, "diffusion_ema.step": one})
    assert out == {"model.model.w": two, "conditioner.c": one}


def test_too_few_matching_keys_fail(
    tmp_path: Path, small_config: dict[str, Any], small_dir: Path, settings: Settings
) -> None:
    raw = random_state_dict(small_config, seed=31)
    dit = sorted(k for k in raw if k.startswith("model."))
    state = {k: raw[k] for k in dit[: len(dit) // 2]}
    state.update({"some.other.model.w": torch.ones(3)})
    folder = _finetune_dir(tmp_path, small_config, state, "half.ckpt")
    with pytest.raises(ModelLoadError, match="matches only") as err:
        SAOEngine.load(str(folder), settings, checkpoint="half.ckpt", base=str(small_dir))
    assert err.value.code == ErrorCode.MODEL_LOAD_FAILED


def test_wrong_architecture_fails_clearly(
    tmp_path: Path, small_config: dict[str, Any], small_state: dict[str, torch.Tensor], settings: Settings
) -> None:
    bigger = json.loads(json.dumps(small_config))
    bigger["model"]["diffusion"]["config"]["embed_dim"] = 128
    folder = tmp_path / "wrong"
    folder.mkdir()
    (folder / "model_config.json").write_text(json.dumps(bigger))
    save_file(small_state, str(folder / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="does not fit model_config.json"):
        SAOEngine.load(str(folder), settings)


def test_arbitrary_pickle_is_refused(tmp_path: Path, small_config: dict[str, Any], small_dir: Path,
                                     settings: Settings) -> None:
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "model_config.json").write_text(json.dumps(small_config))

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("pwned",))

    (folder / "bad.ckpt").write_bytes(pickle.dumps({"state_dict": {}, "x": Payload()}))
    with pytest.raises(ModelLoadError) as err:
        SAOEngine.load(str(folder), settings, checkpoint="bad.ckpt", base=str(small_dir))
    assert err.value.code == ErrorCode.UNSAFE_CHECKPOINT


@pytest.mark.parametrize("name", ["someone/else", "../etc", "thepatch/x/../../y"])
def test_client_named_repos_must_be_allowed(name: str, settings: Settings) -> None:
    with pytest.raises(ModelLoadError) as err:
        check_loadable(name, settings, client_named=True)
    assert err.value.code == ErrorCode.MODEL_NOT_ALLOWED


def test_client_may_not_name_local_paths(small_dir: Path, settings: Settings) -> None:
    with pytest.raises(ModelLoadError) as err:
        check_loadable(str(small_dir), settings, client_named=True)
    assert err.value.code == ErrorCode.MODEL_NOT_ALLOWED


def test_bad_config_is_a_clear_error(tmp_path: Path, small_config: dict[str, Any], settings: Settings) -> None:
    cfg = json.loads(json.dumps(small_config))
    cfg["model"]["diffusion"]["diffusion_objective"] = "v"
    (tmp_path / "model_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="rectified-flow"):
        SAOEngine.load(str(tmp_path), settings)


def test_demo_checkpoint_loads_through_the_same_path(tmp_path: Path, models_dir: Path) -> None:
    settings = Settings(local_models_dir=tmp_path, device="cpu")
    (tmp_path / "t5-base").symlink_to(models_dir / "t5-base")
    name = install_demo(settings)
    assert name == DEFAULT_MODEL and (tmp_path / DEFAULT_MODEL / "model.safetensors").exists()
    engine = SAOEngine.load(name, settings)
    assert engine.demo and engine.sample_rate == 44100 and engine.channels == 2
    assert abs(engine.max_seconds - 524288 / 44100) < 1e-9
    out = engine.generate([SAORequest(prompt="techno 120bpm", steps=2, seed=3)])[0]
    assert out.audio.shape == (2, 524288) and out.audio.dtype == torch.float32 and torch.isfinite(out.audio).all()
    assert install_demo(settings) == name  # idempotent
