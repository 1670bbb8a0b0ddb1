"""Fine-tunes from allowed repos (LOCAL_MODELS_DIR stands in for the hub): listing, switching, generating, prompts,
LRU cache and clearing — the routes the JUCE client relies on; and the riff folder picked up without a restart."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np

from jerry.riffsynth import write_riffs
from jerry.sao.demo import write_demo_checkpoint
from tests.jerry.jerry_helpers import JerryServer, read_wav

REPO = "thepatch/jerry_test_finetune"
PROMPTS = {"version": 1, "dice": {"generic": ["dusty funk"], "drums": ["breakbeat"], "instrumental": ["rhodes"]}}


def _install_finetune(jerry: JerryServer) -> None:
    folder = jerry.settings.local_models_dir / REPO
    write_demo_checkpoint(folder, seed=1)
    (folder / "prompts.json").write_text(json.dumps(PROMPTS))
    (folder / "notes.md").write_text("not a checkpoint")


def test_finetune_lifecycle(http: httpx.Client, jerry: JerryServer) -> None:
    _install_finetune(jerry)
    r = http.post("/models/checkpoints", json={"finetune_repo": REPO})
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True, "repo": REPO, "checkpoints": ["model.safetensors"], "count": 1}

    assert http.post("/models/checkpoints", json={}).status_code == 400
    assert http.post("/models/checkpoints", json={"finetune_repo": "someone/else"}).status_code == 403
    (jerry.settings.local_models_dir / "thepatch" / "no_ckpts").mkdir(parents=True, exist_ok=True)
    missing = http.post("/models/checkpoints", json={"finetune_repo": "thepatch/no_ckpts"})
    assert missing.status_code == 404 and missing.json()["success"] is False

    choice = {"model_type": "finetune", "finetune_repo": REPO, "finetune_checkpoint": "model.safetensors"}
    r = http.post("/models/switch", json=choice)
    assert r.status_code == 200, r.text
    assert r.json()["success"] is True and r.json()["config"] == {"sample_rate": 44100, "sample_size": 524288}
    key = f"finetune_{REPO}_model.safetensors"
    status = http.get("/models/status").json()
    assert status["cache_status"]["loaded_models"] == ["standard_saos", key]
    assert status["model_details"][key]["type"] == "finetune"

    prompts = http.get("/models/prompts", params={"prefer": "finetune"}).json()
    assert prompts["model_key"] == key and prompts["prompts"] == PROMPTS
    standard_prompts = http.get("/models/prompts", params={"key": "standard_saos"}).json()
    assert standard_prompts["prompts"]["dice"] == {"generic": [], "drums": [], "instrumental": []}

    body = {"prompt": "funk 100bpm", "steps": 2, "seed": 21, "return_format": "base64", "seconds_total": 2}
    tuned = http.post("/generate", json={**body, **choice})
    plain = http.post("/generate", json=body)
    assert tuned.status_code == plain.status_code == 200
    assert tuned.json()["metadata"]["model"] == REPO
    a = read_wav(base64.b64decode(tuned.json()["audio_base64"]))[1]
    b = read_wav(base64.b64decode(plain.json()["audio_base64"]))[1]
    assert not np.array_equal(a, b), "the fine-tune's weights are used"
    loop = http.post("/generate/loop", data={"prompt": "funk 100bpm", "steps": "2", "return_format": "base64", **choice})
    assert loop.status_code == 200 and loop.json()["metadata"]["model_type"] == "finetune"

    cleared = http.post("/models/clear-cache").json()
    assert cleared["success"] is True and cleared["unloaded"] == [key]
    assert http.get("/models/status").json()["cache_status"]["loaded_models"] == ["standard_saos"]
    assert http.get("/health").status_code == 200


def test_riffs_added_to_the_folder_are_found_without_a_restart(http: httpx.Client, jerry: JerryServer) -> None:
    folder = jerry.state.riffs.folder
    try:
        write_riffs(folder, (("dsharp", 110),))
        r = http.post("/generate/loop-with-riff", data={"prompt": "x 110bpm", "key": "dsharp", "steps": "1",
                                                         "return_format": "base64"})
        assert r.status_code == 200, r.text
        assert r.json()["metadata"]["riff"] == "dsharp_110bpm.wav"
        assert "dsharp" in http.get("/riffs/available").json()["available_keys"]
    finally:
        (folder / "dsharp_110bpm.wav").unlink(missing_ok=True)
        jerry.state.riffs.rescan()
