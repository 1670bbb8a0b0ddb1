"""Resolve a model name to a local folder of checkpoint files: a local folder, LOCAL_MODELS_DIR, or the HF hub.

All engines load through here, demo models included (they are written to a local folder in the published layout),
so the code path tested with tiny models is the one that loads real weights.
"""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import ErrorCode, ModelLoadError
from .settings import Settings

log = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def is_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and ".." not in name


def check_allowed(name: str, settings: Settings, extra_allowed: Iterable[str] = ()) -> None:
    """Clients may only name repos in the catalogue or owned by an allowed owner: no arbitrary pickles."""
    if not is_repo_id(name):
        raise ModelLoadError(ErrorCode.MODEL_NOT_ALLOWED, f"model name {name!r} is not an owner/name repo id")
    owner = name.split("/", 1)[0]
    if name in set(extra_allowed) or owner in settings.model_allow_owners:
        return
    raise ModelLoadError(
        ErrorCode.MODEL_NOT_ALLOWED,
        f"model {name!r} is not allowed; allowed owners: {', '.join(settings.model_allow_owners)} "
        "(set MODEL_ALLOW_OWNERS to add more)",
    )


def local_dir_for(name: str, settings: Settings) -> Path | None:
    """A folder that already holds the model: an existing path, or LOCAL_MODELS_DIR/<owner>/<name>."""
    path = Path(name)
    if path.is_dir():
        return path
    if settings.local_models_dir and is_repo_id(name):
        candidate = settings.local_models_dir / name
        if candidate.is_dir():
            return candidate
    return None


def resolve_model_dir(
    name: str,
    files: Sequence[str],
    settings: Settings,
    *,
    optional_files: Sequence[str] = (),
    revision: str | None = None,
) -> Path:
    """Return a folder holding `files` (required) and whichever `optional_files` exist, downloading if needed."""
    local = local_dir_for(name, settings)
    if local is not None:
        missing = [f for f in files if not (local / f).exists()]
        if missing:
            raise ModelLoadError(ErrorCode.MODEL_NOT_FOUND, f"model folder {local} lacks {', '.join(missing)}")
        return local
    if not is_repo_id(name):
        raise ModelLoadError(ErrorCode.MODEL_NOT_FOUND, f"model {name!r} is neither a folder nor a hub repo id")
    return _download(name, files, optional_files, settings, revision)


def _download(
    repo_id: str, files: Sequence[str], optional_files: Sequence[str], settings: Settings, revision: str | None
) -> Path:
    folder: Path | None = None
    for filename in [*files, *optional_files]:
        path = fetch_file(repo_id, filename, settings, revision=revision, required=filename in files)
        if path is not None:
            folder = path.parent
    assert folder is not None
    return folder


# Downloads in progress in this process, "repo/file" -> bytes done and total: told in /health (`loading`) and to
# clients waiting on a model, so a first multi-GB download is visibly moving rather than silent.
_DOWNLOADS: dict[str, dict[str, int]] = {}


def download_progress() -> dict[str, dict[str, int]]:
    """A copy of the running downloads' progress ({} when none)."""
    return {name: dict(p) for name, p in _DOWNLOADS.items()}


def _progress_class(name: str) -> type:
    """A tqdm class for hf_hub_download that also records its progress under `name` while it runs."""
    from tqdm.auto import tqdm

    class Progress(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            self.done = int(kwargs.get("initial") or 0)  # type: ignore[call-overload]  # own count: tqdm's stops when disabled
            _DOWNLOADS[name] = {"done_bytes": self.done, "total_bytes": int(self.total or 0)}

        def update(self, n: float | None = 1) -> bool | None:
            self.done += int(n or 0)
            _DOWNLOADS[name] = {"done_bytes": self.done, "total_bytes": int(self.total or 0)}
            return super().update(n)

        def close(self) -> None:
            _DOWNLOADS.pop(name, None)
            super().close()

    return Progress


def fetch_file(
    repo_id: str, filename: str, settings: Settings, *, revision: str | None = None, required: bool = True
) -> Path | None:
    """One file of a hub repo, from the cache or downloaded (resuming a partial download); None for a missing optional
    file. Every loader and `gary-stack pull` come through here, so they fail with the same messages."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    cache_dir = str(settings.hf_home / "hub") if settings.hf_home else None
    token = settings.hf_token_value
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, token=token,
                                    tqdm_class=_progress_class(f"{repo_id}/{filename}")))
    except GatedRepoError as exc:
        hint = "set HF_TOKEN to a token of an account that accepted the model's licence on its hub page"
        if token:
            hint = "the HF_TOKEN given has no access: accept the licence on the model's hub page with that account"
        raise ModelLoadError(ErrorCode.MODEL_GATED, f"{repo_id} is gated: {hint}") from exc
    except RepositoryNotFoundError as exc:
        raise ModelLoadError(
            ErrorCode.MODEL_NOT_FOUND,
            f"{repo_id} was not found on the hub (or is private: set HF_TOKEN)",
        ) from exc
    except LocalEntryNotFoundError as exc:
        if not required:
            return None
        raise ModelLoadError(
            ErrorCode.MODEL_LOAD_FAILED,
            f"{repo_id}/{filename} is not cached and the hub cannot be reached (offline?); "
            "download it once with network access, or run with --demo",
        ) from exc
    except EntryNotFoundError as exc:
        if not required:
            return None
        raise ModelLoadError(ErrorCode.MODEL_NOT_FOUND, f"{repo_id} has no file {filename}") from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ModelLoadError(
                ErrorCode.MODEL_LOAD_FAILED, f"no disk space left to download {repo_id} (HF_HOME={cache_dir})"
            ) from exc
        raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, f"could not fetch {repo_id}/{filename}: {exc}") from exc
