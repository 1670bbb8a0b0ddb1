"""T5 and hub loading through the real code path, on tiny models written in the published layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from garycommon.errors import ErrorCode, ModelLoadError
from garycommon.hub import check_allowed, resolve_model_dir
from garycommon.settings import Settings
from garycommon.textenc import load_t5, write_tiny_t5


def test_tiny_t5_loads_through_local_models_dir(tmp_path: Path) -> None:
    write_tiny_t5(tmp_path / "t5-base")
    tok, enc = load_t5("t5-base", Settings(local_models_dir=tmp_path))
    batch = tok(["lofi chill drums 90 bpm", "piano"], return_tensors="pt", padding=True)
    assert batch.input_ids[0, -1].item() == tok.eos_token_id
    assert (batch.input_ids[0] != tok.unk_token_id).all(), "the tokenizer must know the words it was trained on"
    out = enc(**batch).last_hidden_state
    assert out.shape[:2] == batch.input_ids.shape and out.shape[-1] == 768
    assert torch.isfinite(out).all()


def test_tiny_t5_is_deterministic(tmp_path: Path) -> None:
    a = write_tiny_t5(tmp_path / "a", seed=3)
    b = write_tiny_t5(tmp_path / "b", seed=3)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_local_repo_folder_resolves_and_reports_missing_files(tmp_path: Path) -> None:
    repo = tmp_path / "thepatch" / "demo"
    repo.mkdir(parents=True)
    (repo / "state_dict.bin").write_bytes(b"x")
    s = Settings(local_models_dir=tmp_path)
    assert resolve_model_dir("thepatch/demo", ["state_dict.bin"], s) == repo
    with pytest.raises(ModelLoadError) as info:
        resolve_model_dir("thepatch/demo", ["state_dict.bin", "compression_state_dict.bin"], s)
    assert info.value.code == ErrorCode.MODEL_NOT_FOUND and "compression_state_dict.bin" in info.value.message


def test_offline_hub_gives_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    s = Settings(hf_home=tmp_path / "hf")
    with pytest.raises(ModelLoadError) as info:
        resolve_model_dir("thepatch/not-cached-anywhere", ["state_dict.bin"], s)
    assert info.value.code == ErrorCode.MODEL_LOAD_FAILED
    assert "not cached" in info.value.message


@pytest.mark.parametrize(
    "name,ok",
    [("thepatch/vanya_ai_dnb_0.1", True), ("facebook/musicgen-small", True), ("evil/model", False),
     ("../etc/passwd", False), ("thepatch/../../x", False), ("no-slash", False)],
)
def test_allow_list(name: str, ok: bool) -> None:
    s = Settings()
    if ok:
        check_allowed(name, s)
    else:
        with pytest.raises(ModelLoadError) as info:
            check_allowed(name, s)
        assert info.value.code == ErrorCode.MODEL_NOT_ALLOWED


def test_download_progress_is_recorded_per_file_while_it_runs() -> None:
    """What /health (`loading`) shows during a first download: bytes done and total per file, gone once finished."""
    from garycommon import hub

    bar = hub._progress_class("stabilityai/stable-audio-open-small/model.safetensors")(total=3_400, disable=True)
    bar.update(1_200)
    assert hub.download_progress() == {
        "stabilityai/stable-audio-open-small/model.safetensors": {"done_bytes": 1_200, "total_bytes": 3_400}}
    bar.close()
    assert hub.download_progress() == {}
