"""`gary-stack pull`: fetch every model the stack serves into the Hugging Face cache ahead of the first request.

The files are the ones the engines themselves ask for (same names, same optional files), fetched through
`garycommon.hub.fetch_file`, the loaders' own code path: a pulled model starts without a download, and a gated or
unreachable model fails here with the message the services would print. Each file shows its own progress bar
(huggingface_hub's); an interrupted download resumes where it stopped on the next pull; HF_TOKEN and HF_HOME are
honoured as everywhere else. `--models` narrows the list (repo ids, gary / jerry / terry for a service's models, or
small / medium / large for gary's MusicGen sizes); the T5 text encoder they all load always comes along.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from garycommon.errors import GaryError
from garycommon.settings import Settings

log = logging.getLogger("gary-stack")


@dataclass(frozen=True)
class ModelFiles:
    """One repo and the files a service loads from it (optional ones are fetched when the repo has them)."""

    repo: str
    service: str
    files: tuple[str, ...]
    optional: tuple[str, ...] = ()


def plan(settings: Settings) -> list[ModelFiles]:
    """Every model the stack serves: gary's catalogue, jerry's and terry's checkpoints, and the T5 they all name."""
    from gary.catalog import all_model_names
    from gary.musicgen.checkpoint import COMPRESSION_FILE, LM_FILE
    from garycommon.textenc import _TOKENIZER, _WEIGHTS, HUB_ALIASES
    from jerry.sao.engine import CONFIG_FILE, WEIGHT_FILES
    from terry.melodyflow.checkpoint import CODEC_FILE, DIT_FILE

    models = [ModelFiles(name, "gary", (LM_FILE, COMPRESSION_FILE)) for name in all_model_names()]
    models.append(ModelFiles(settings.jerry_model, "jerry", (CONFIG_FILE,), tuple(WEIGHT_FILES)))
    models.append(ModelFiles(settings.terry_model, "terry", (DIT_FILE, CODEC_FILE)))
    models.append(ModelFiles(HUB_ALIASES["t5-base"], "gary,jerry,terry", ("config.json",), (*_WEIGHTS, *_TOKENIZER)))
    return models


def select(models: list[ModelFiles], wanted: list[str]) -> list[ModelFiles]:
    """The models named by repo id, by service, or by MusicGen size (small, medium, large), plus the T5 text encoder
    every engine loads; an unknown name is an error listing the known ones."""
    from gary.catalog import BY_SIZE

    if not wanted:
        return models
    chosen: list[ModelFiles] = []
    for name in wanted:
        hits = [m for m in models if m.repo == name or name in m.service.split(",") or m.repo in BY_SIZE.get(name, ())]
        if not hits:
            known = ", ".join(["gary", "jerry", "terry", *BY_SIZE, *(m.repo for m in models)])
            raise SystemExit(f"gary-stack pull: unknown model {name!r}; known: {known}")
        chosen.extend(m for m in hits if m not in chosen)
    chosen.extend(m for m in models if "," in m.service and m not in chosen)  # the shared T5
    return chosen


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pull", help="download every model the stack serves into the HF cache (HF_HOME), resumable")
    p.add_argument("--models", nargs="+", default=[], metavar="NAME",
                   help="only these: repo ids, gary / jerry / terry (a service's models), small / medium / large (MusicGen "
                   "sizes); the shared T5 always comes along")
    p.add_argument("--list", action="store_true", help="print what would be fetched and exit")


def pull(args: argparse.Namespace, settings: Settings) -> int:
    from garycommon.hub import fetch_file, local_dir_for

    models = select(plan(settings), args.models)
    if args.list:
        for m in models:
            optional = f" (+ if present: {', '.join(m.optional)})" if m.optional else ""
            print(f"{m.repo} [{m.service}]: {', '.join(m.files)}{optional}")
        return 0
    where = settings.hf_home / "hub" if settings.hf_home else "the default Hugging Face cache (HF_HOME unset)"
    log.info("pulling %d models into %s%s", len(models), where, "" if settings.hf_token else " (no HF_TOKEN)")
    total = sum(len(m.files) + len(m.optional) for m in models)
    done = fetched = size = 0
    for n, m in enumerate(models, start=1):
        local = local_dir_for(m.repo, settings)
        if local is not None:
            log.info("[%d/%d] %s: served from %s (LOCAL_MODELS_DIR), nothing to fetch", n, len(models), m.repo, local)
            done += len(m.files) + len(m.optional)
            continue
        for filename in (*m.files, *m.optional):
            done += 1
            log.info("[%d/%d] %s/%s (file %d of %d)", n, len(models), m.repo, filename, done, total)
            try:
                path = fetch_file(m.repo, filename, settings, required=filename in m.files)
            except GaryError as exc:
                log.error("%s", exc.message)
                return 1
            if path is not None:
                fetched += 1
                size += path.stat().st_size
    log.info("done: %d files (%.2f GB) cached for %d models", fetched, size / 1e9, len(models))
    return 0
