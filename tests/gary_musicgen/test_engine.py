"""Our engine on its own: reproducible sampling, batch invariance, safe loading, model resolution, residency."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from gary.catalog import AllowedModels
from gary.musicgen import GenerationRequest, MusicGenEngine
from gary.musicgen.checkpoint import LM_FILE, load_pickle
from gary.musicgen.demo import lm_xp_cfg, random_lm_state
from gary.musicgen.generate import generate_eager
from gary.musicgen.model import extension_plan
from garycommon.errors import ErrorCode, GaryError
from garycommon.settings import Settings

MONO = "testowner/tiny-mono"  # written by conftest.models_dir
STEREO = "testowner/tiny-stereo"


@pytest.fixture(scope="module")
def engine(settings: Settings) -> MusicGenEngine:
    return MusicGenEngine(settings, torch.device("cpu"), max_resident=2)


def _prompt(seconds: float, seed: int, channels: int = 2) -> torch.Tensor:
    return 0.3 * torch.randn(channels, int(seconds * 32000), generator=torch.Generator().manual_seed(seed))


def _req(seed: int | None, description: str | None = "lofi drums", prompt_s: float | None = 0.4, **kw) -> GenerationRequest:
    prompt = _prompt(prompt_s, 11) if prompt_s else None
    return GenerationRequest(MONO, prompt, 32000, duration=kw.pop("duration", 1.2), description=description, seed=seed,
                             **kw)


def _tokens(engine: MusicGenEngine, reqs: list[GenerationRequest]) -> list[torch.Tensor]:
    model = engine.model(MONO)
    jobs = [model.to_job(r)[0] for r in reqs]
    return generate_eager(model.lm, jobs, torch.float32, model.keys)


def test_sampling_is_reproducible_and_batch_invariant(engine: MusicGenEngine) -> None:
    alone = _tokens(engine, [_req(7)])[0]
    again = _tokens(engine, [_req(7)])[0]
    assert torch.equal(alone, again)
    # same request at batch position 1, next to requests with other prompts, lengths, descriptions and parameters
    batch = _tokens(engine, [
        _req(1, "a much longer description of some epic orchestral film music", prompt_s=0.7, duration=1.0),
        _req(7),
        _req(9, None, prompt_s=None, top_p=0.9, temperature=0.7),
    ])
    assert torch.equal(batch[1], alone)
    assert batch[0].shape[-1] == 50 and batch[2].shape[-1] == 60
    other_seed = _tokens(engine, [_req(8)])[0]
    assert not torch.equal(other_seed, alone)
    # the prompt's frames are reproduced verbatim at the start of the continuation
    prompt_codes = engine.model(MONO).encode_prompt(_prompt(0.4, 11), 32000)
    assert torch.equal(alone[:, : prompt_codes.shape[-1]], prompt_codes)


def test_engine_generate_shapes_seeds_and_progress(engine: MusicGenEngine) -> None:
    seen: list[tuple[int, int]] = []
    out = engine.generate([_req(None, duration=1.0), _req(5, prompt_s=None, duration=0.8)],
                          progress=lambda step, total: seen.append((step, total)))
    assert [r.audio.shape for r in out] == [torch.Size([1, 32000]), torch.Size([1, 25600])]
    assert all(r.sample_rate == 32000 and r.audio.dtype == torch.float32 for r in out)
    assert out[1].seed == 5 and isinstance(out[0].seed, int)
    steps = [s for s, _ in seen]
    assert steps == sorted(steps) and seen[-1][0] == seen[-1][1] == 43  # 40 frames + 3 delay steps, no prompt
    # the reported seed reproduces the result
    replay = engine.generate([_req(out[0].seed, duration=1.0)])
    assert torch.allclose(replay[0].audio, out[0].audio, atol=1e-6)


def test_stereo_model_outputs_two_channels(engine: MusicGenEngine) -> None:
    out = engine.generate([GenerationRequest(STEREO, _prompt(0.3, 2, channels=1), 32000, duration=0.6, seed=1)])
    assert out[0].audio.shape == (2, 19200)


@pytest.mark.parametrize(
    ("kw", "needle"),
    [({"duration": 301.0}, "duration"), ({"top_p": 1.5}, "top_p"), ({"temperature": -1.0}, "temperature"),
     ({"top_k": -3}, "top_k"), ({"duration": 0.3}, "shorter than the duration")],
)
def test_bad_parameters_are_refused(engine: MusicGenEngine, kw: dict, needle: str) -> None:
    with pytest.raises(GaryError) as err:
        engine.generate([_req(1, **kw)])
    assert err.value.code == ErrorCode.VALIDATION_ERROR and needle in err.value.message


class _Evil:
    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (print, ("unsafe code ran",))


def test_unsafe_pickle_is_refused_not_executed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"xp.cfg": "{}", "best_state": {}, "payload": _Evil()}, tmp_path / LM_FILE)
    with pytest.raises(GaryError) as err:
        load_pickle(tmp_path / LM_FILE)
    assert err.value.code == ErrorCode.UNSAFE_CHECKPOINT
    assert "unsafe code ran" not in capsys.readouterr().out


def test_pickled_omegaconf_config_is_accepted(tmp_path: Path, models_dir: Path, settings: Settings) -> None:
    """Older exports pickled the DictConfig itself rather than its YAML: still only data, so it loads."""
    from omegaconf import OmegaConf

    folder = tmp_path / "testowner" / "old-export"
    shutil.copytree(models_dir / MONO, folder)
    cfg = lm_xp_cfg(dim=32, num_heads=2, num_layers=2)
    torch.save({"xp.cfg": OmegaConf.create(cfg), "best_state": random_lm_state(cfg, 1), "version": "1.0.0"},
               folder / LM_FILE)
    engine = MusicGenEngine(settings, torch.device("cpu"))
    out = engine.generate([GenerationRequest(str(folder), None, duration=0.2, seed=1)])
    assert out[0].audio.shape == (1, 6400)


def test_model_resolution_errors(tmp_path: Path, models_dir: Path) -> None:
    settings = Settings(local_models_dir=models_dir, model_allow_owners=["testowner"], hf_home=tmp_path / "hf")
    engine = MusicGenEngine(settings, torch.device("cpu"), source=AllowedModels(settings))
    with pytest.raises(GaryError) as err:
        engine.preload("someoneelse/model")
    assert err.value.code == ErrorCode.MODEL_NOT_ALLOWED
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / LM_FILE).write_bytes((models_dir / MONO / LM_FILE).read_bytes())
    with pytest.raises(GaryError) as err:
        engine.preload(str(broken))
    assert err.value.code == ErrorCode.MODEL_NOT_FOUND and "compression_state_dict.bin" in err.value.message
    # a config this engine cannot reproduce is refused by name, not mis-generated
    odd = tmp_path / "odd"
    shutil.copytree(models_dir / MONO, odd)
    pkg = load_pickle(odd / LM_FILE)
    cfg = yaml.safe_load(pkg["xp.cfg"])
    cfg["transformer_lm"]["positional_embedding"] = "rope"
    torch.save({**pkg, "xp.cfg": yaml.safe_dump(cfg)}, odd / LM_FILE)
    with pytest.raises(GaryError) as err:
        engine.preload(str(odd))
    # the client is told which setting is unsupported, never the checkpoint's value (that goes to the server log)
    assert err.value.code == ErrorCode.MODEL_LOAD_FAILED and "positional embedding" in err.value.message
    assert "rope" not in err.value.message


def test_missing_hub_repo_gives_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = Settings(local_models_dir=tmp_path, model_allow_owners=["testowner"], hf_home=tmp_path / "hf")
    with pytest.raises(GaryError) as err:
        MusicGenEngine(settings, torch.device("cpu"), source=AllowedModels(settings)).preload("testowner/not-downloaded")
    assert err.value.code in (ErrorCode.MODEL_LOAD_FAILED, ErrorCode.MODEL_NOT_FOUND)
    assert "testowner/not-downloaded" in err.value.message


def test_lru_residency_and_unload(settings: Settings) -> None:
    engine = MusicGenEngine(settings, torch.device("cpu"), max_resident=1, source=AllowedModels(settings))
    engine.preload(MONO)
    assert engine.resident() == [MONO]
    engine.preload(STEREO)
    assert engine.resident() == [STEREO]
    assert engine.vram_mb(STEREO) > 0 and engine.vram_mb("thepatch/hoenn_lofi") > engine.vram_mb("thepatch/bleeps-medium")
    engine.unload(STEREO)
    assert engine.resident() == []


def test_demo_mode_serves_any_allowed_name(tmp_path: Path) -> None:
    """Demo mode without LOCAL_MODELS_DIR: tiny checkpoints and T5 go to DATA_DIR/demo-models and load from there."""
    settings = Settings(data_dir=tmp_path, demo_models=True, hf_home=tmp_path / "hf")
    engine = MusicGenEngine(settings, torch.device("cpu"), source=AllowedModels(settings))
    out = engine.generate([GenerationRequest("thepatch/bleeps-medium", _prompt(0.2, 1), 44100, duration=0.4, seed=3,
                                             description="bleeps")])
    assert out[0].audio.shape == (1, 12800)
    assert (tmp_path / "demo-models" / "thepatch" / "bleeps-medium" / LM_FILE).exists()
    with pytest.raises(GaryError) as err:  # demo mode still only accepts owner/name ids of allowed owners
        engine.preload("../../escape")
    assert err.value.code == ErrorCode.MODEL_NOT_ALLOWED



def test_concurrent_loads_of_one_model_load_it_once(settings: Settings) -> None:
    from concurrent.futures import ThreadPoolExecutor

    engine = MusicGenEngine(settings, torch.device("cpu"), max_resident=2)
    with ThreadPoolExecutor(3) as pool:
        models = list(pool.map(lambda _: engine.model(STEREO), range(3)))
    assert models[0] is models[1] is models[2]
    assert engine.resident() == [STEREO]


def test_long_request_next_to_short_ones(settings: Settings) -> None:
    """A request past the window is extended on its own after the batched ones; results keep request order."""
    long_engine = MusicGenEngine(settings, torch.device("cpu"))
    name = "testowner/tiny-19s"
    out = long_engine.generate([
        GenerationRequest(name, _prompt(0.3, 1), 32000, duration=20.0, seed=1),
        GenerationRequest(name, None, duration=0.5, seed=2),
    ])
    assert [tuple(r.audio.shape) for r in out] == [(1, 640_000), (1, 16_000)]
    assert [r.seed for r in out] == [1, 2]


def test_extension_plan_of_a_30s_model() -> None:
    """6 s prompt -> 60 s: three windows, each continuing the last 12 s; their new frames add up to the duration."""
    plan = extension_plan(60.0, 30.0, 18.0, 50, 300)
    assert plan == [(300, 1500), (600, 1500), (600, 1200)]
    assert 300 + sum(frames - plen for plen, frames in plan) == 3000
