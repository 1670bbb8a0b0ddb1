"""Issue 13 item 6: a checkpoint's config is data. OmegaConf resolvers never run on it (`${oc.env:...}` can't read the
server's environment), plain key references still work, and no config value reaches a client-facing error (gary's
MusicGen, terry's MelodyFlow, jerry's model_config.json). The end-to-end case (gary's job error seen by gary4juce)
is in tests/flows/test_keys_flow.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from garycommon.errors import ModelLoadError
from garycommon.safeconfig import plain_config

SECRET = "value-of-a-server-secret"


@pytest.fixture(autouse=True)
def server_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEAK_ME", SECRET)


def test_plain_config_resolves_key_references_and_never_runs_resolvers() -> None:
    text = yaml.safe_dump({"dim": 64, "lm": {"dim": "${dim}", "name": "model-${dim}", "env": "${oc.env:LEAK_ME}",
                                             "decoded": "${oc.decode:'{a: 1}'}", "loop": "${lm.loop}",
                                             "missing": "${nope.nothing}"}})
    cfg = plain_config(text, "xp.cfg")
    assert cfg["lm"]["dim"] == 64 and cfg["lm"]["name"] == "model-64"
    assert cfg["lm"]["env"] == "${oc.env:LEAK_ME}"  # the literal text: nothing was looked up
    assert cfg["lm"]["decoded"].startswith("${oc.decode")
    assert cfg["lm"]["loop"] == "${lm.loop}" and cfg["lm"]["missing"] == "${nope.nothing}"
    assert SECRET not in repr(cfg)


def test_plain_config_reads_a_pickled_dictconfig_the_same_way() -> None:
    from omegaconf import OmegaConf

    cfg = plain_config(OmegaConf.create({"a": 3, "b": "${a}", "c": "${oc.env:LEAK_ME}"}), "xp.cfg")
    assert cfg == {"a": 3, "b": 3, "c": "${oc.env:LEAK_ME}"}


def test_musicgen_config_with_an_env_resolver_fails_without_the_value(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    from gary.musicgen.checkpoint import config_dict, lm_config
    from gary.musicgen.demo import DEMO_SIZES, lm_xp_cfg

    cfg = lm_xp_cfg(**DEMO_SIZES["small"])
    cfg["conditioners"]["description"]["t5"]["name"] = "${oc.env:LEAK_ME}"
    with pytest.raises(ModelLoadError) as err:
        lm_config(config_dict({"xp.cfg": yaml.safe_dump(cfg)}, "thepatch/leaky"))
    assert "text encoder" in err.value.message and SECRET not in err.value.message
    assert "oc.env" not in err.value.message  # no config value at all in what a client is told
    # a bad value of our own keys' kind is not echoed either (the operator reads it in the log)
    cfg["conditioners"]["description"]["t5"]["name"] = "t5-from-somewhere-else"
    with pytest.raises(ModelLoadError) as err:
        lm_config(config_dict({"xp.cfg": yaml.safe_dump(cfg)}, "thepatch/other"))
    assert "t5-from-somewhere-else" not in err.value.message
    assert "t5-from-somewhere-else" in caplog.text


def test_melodyflow_checkpoint_with_an_env_resolver(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from terry.melodyflow.checkpoint import dit_config, load_package
    from terry.melodyflow.demo import tiny_configs

    dit, _ = tiny_configs()
    dit["transformer_lm"]["norm"] = "${oc.env:LEAK_ME}"
    path = tmp_path / "state_dict.bin"
    torch.save({"xp.cfg": OmegaConf.create(dit), "best_state": {}}, path)
    cfg, _ = load_package(path)
    assert cfg["transformer_lm"]["norm"] == "${oc.env:LEAK_ME}"
    with pytest.raises(ModelLoadError) as err:
        dit_config(cfg)
    assert "transformer_lm.norm" in err.value.message and SECRET not in err.value.message
    assert "oc.env" not in err.value.message


def test_jerry_model_config_errors_name_the_option_not_its_value() -> None:
    from jerry.sao.config import parse_config

    with pytest.raises(ModelLoadError) as err:
        parse_config({"model_type": SECRET})
    assert "model_type" in err.value.message and SECRET not in err.value.message
