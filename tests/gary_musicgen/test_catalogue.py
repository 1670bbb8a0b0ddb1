"""gary's one model list (gary.catalog) tied to its users: the source the service hands the engine allows exactly the
catalogue plus MODEL_ALLOW_OWNERS repos, every catalogue name loads in demo mode at its catalogue size, and the names
gary's routes use come from the list. The engine package itself names no model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import gary.musicgen
from gary import catalog
from gary.catalog import ALL_MODELS, BY_SIZE, AllowedModels
from gary.musicgen import MusicGenEngine
from gary.musicgen.demo import DEMO_SIZES
from garycommon.errors import ErrorCode, GaryError
from garycommon.settings import Settings

# Names next to the catalogue's: a catalogue owner's other repos, other owners' repos of catalogue names, other services'.
NEAR_MISSES = ("thepatch/hoenn_lofi_2", "thepatch/keygen-gary-v2-small-9", "thepatch/bleeps-large", "other/hoenn_lofi",
               "facebook/musicgen-small", "stabilityai/stable-audio-open-small", "../thepatch/hoenn_lofi")


def _loadable(source: AllowedModels, names: tuple[str, ...]) -> set[str]:
    ok = set()
    for name in names:
        try:
            source.checkpoint(name)
        except GaryError as err:
            assert err.code == ErrorCode.MODEL_NOT_ALLOWED, (name, err.message)
        else:
            ok.add(name)
    return ok


@pytest.mark.parametrize("owners", [[], ["facebook"]])
def test_the_engine_is_handed_exactly_the_catalogue_and_the_allowed_owners(tmp_path: Path, owners: list[str]) -> None:
    settings = Settings(data_dir=tmp_path, demo_models=True, model_allow_owners=owners, hf_home=tmp_path / "hf")
    extras = {n for n in NEAR_MISSES if n.split("/", 1)[0] in owners}
    assert _loadable(AllowedModels(settings), ALL_MODELS + NEAR_MISSES) == set(ALL_MODELS) | extras


def test_every_catalogue_name_loads_in_demo_mode_at_its_catalogue_size(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, demo_models=True, model_allow_owners=[], hf_home=tmp_path / "hf")
    engine = MusicGenEngine(settings, torch.device("cpu"), max_resident=1, source=AllowedModels(settings))
    estimates: dict[str, set[int]] = {}
    for size, names in BY_SIZE.items():
        for name in names:
            estimates.setdefault(size, set()).add(engine.vram_mb(name))  # before loading: from the catalogue size
            assert engine.model(name).lm.cfg.dim == DEMO_SIZES[size]["dim"], name
    assert engine.resident() == [ALL_MODELS[-1]]
    small, medium, large = (estimates[s] for s in ("small", "medium", "large"))
    assert len(small) == len(medium) == len(large) == 1 and max(small) < min(medium) < min(large)


def test_the_names_gary_serves_come_from_the_catalogue() -> None:
    assert len(ALL_MODELS) == len(set(ALL_MODELS)) == sum(len(n) for n in BY_SIZE.values())
    assert catalog.DEFAULT_MODEL in ALL_MODELS and set(catalog.WARMUP_MODELS) <= set(ALL_MODELS)
    listed = []
    for entries in catalog.models_response()["models"].values():
        for entry in entries:
            listed += [c["path"] for c in entry["checkpoints"]] if entry["type"] == "group" else [entry["path"]]
    assert sorted(listed) == sorted(ALL_MODELS)


def test_the_engine_package_names_no_model() -> None:
    """One list: a second catalogue (or an allow-list) inside the engine would drift from gary.catalog's."""
    folder = Path(gary.musicgen.__file__).parent
    owners = {name.split("/", 1)[0] + "/" for name in ALL_MODELS}
    for source in folder.glob("*.py"):
        text = source.read_text()
        assert not any(owner in text for owner in owners), f"{source.name} names a model: use gary.catalog"
