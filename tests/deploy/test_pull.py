"""`gary-stack pull` as a self-hoster runs it (the real CLI in a subprocess), without any network:

- offline (HF_HUB_OFFLINE=1) against a folder laid out as the hub's cache (HF_HOME/hub/models--owner--name/...);
- against a stand-in hub on loopback (HF_ENDPOINT), for what needs a server: a gated repo's error, and a second pull
  after a failed one fetching only the files still missing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gary.catalog import ALL_MODELS

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _pull(args: list[str], hf_home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("HF_", "HUGGINGFACE_")) and k not in {"LOCAL_MODELS_DIR", "DEMO_MODELS"}}
    base.update(HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1", **env)
    return subprocess.run([sys.executable, "-m", "garystack", "pull", *args], env=base, capture_output=True,
                          text=True, timeout=300)


def _cache(hf_home: Path, repo: str, files: dict[str, bytes]) -> None:
    """One repo in the hub cache layout: blobs by content hash, a snapshot of symlinks, refs/main -> the commit."""
    root = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    snap = root / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    (root / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).symlink_to(os.path.relpath(blob, snap))


MUSICGEN = {"state_dict.bin": b"lm" * 100, "compression_state_dict.bin": b"codec" * 50}


def test_offline_pull_from_a_complete_cache_checks_every_file(tmp_path: Path) -> None:
    _cache(tmp_path, "thepatch/vanya_ai_dnb_0.1", MUSICGEN)
    _cache(tmp_path, "facebook/melodyflow-t24-30secs", MUSICGEN)
    _cache(tmp_path, "google-t5/t5-base", {"config.json": b"{}", "model.safetensors": b"w" * 10, "spiece.model": b"s"})
    done = _pull(["--models", "thepatch/vanya_ai_dnb_0.1", "terry"], tmp_path, HF_HUB_OFFLINE="1")
    assert done.returncode == 0, done.stderr
    out = done.stderr
    for name in ("thepatch/vanya_ai_dnb_0.1/state_dict.bin", "facebook/melodyflow-t24-30secs/compression_state_dict.bin",
                 "google-t5/t5-base/config.json"):
        assert name in out, out
    # T5: the optional files the cache lacks are skipped offline, as the loader skips them
    assert "done: 7 files" in out, out


def test_offline_pull_of_a_missing_file_fails_with_the_loaders_message(tmp_path: Path) -> None:
    _cache(tmp_path, "thepatch/vanya_ai_dnb_0.1", {"state_dict.bin": b"lm"})
    done = _pull(["--models", "thepatch/vanya_ai_dnb_0.1"], tmp_path, HF_HUB_OFFLINE="1")
    assert done.returncode == 1
    assert ("thepatch/vanya_ai_dnb_0.1/compression_state_dict.bin is not cached and the hub cannot be reached "
            "(offline?); download it once with network access, or run with --demo") in done.stderr


def test_default_plan_is_every_model_the_stack_serves(tmp_path: Path) -> None:
    done = _pull(["--list"], tmp_path)
    assert done.returncode == 0, done.stderr
    repos = [line.split(" ", 1)[0] for line in done.stdout.splitlines()]
    assert repos == [*ALL_MODELS, "stabilityai/stable-audio-open-small", "facebook/melodyflow-t24-30secs",
                     "google-t5/t5-base"]
    done = _pull(["--models", "nobody/nothing"], tmp_path)
    assert done.returncode != 0 and "unknown model 'nobody/nothing'" in done.stderr
    done = _pull(["--list", "--models", "medium"], tmp_path)
    assert [line.split(" ", 1)[0] for line in done.stdout.splitlines()] == [
        "thepatch/bleeps-medium", "thepatch/keygen-gary-medium-12", "google-t5/t5-base"]


class FakeHub:
    """Just enough of the hub's file endpoint: HEAD/GET /{repo}/resolve/{rev}/{file}; gated repos answer 403."""

    def __init__(self, files: dict[str, dict[str, bytes]], gated: set[str] = frozenset(), broken: set[str] = frozenset()):
        self.files, self.gated, self.broken = files, set(gated), set(broken)
        self.gets: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                pass

            def _answer(self, body: bool) -> None:
                parts = self.path.split("?")[0].strip("/").split("/")
                repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
                if repo in hub.gated:
                    self.send_response(403)
                    self.send_header("X-Error-Code", "GatedRepo")
                    self.send_header("X-Error-Message", "Access to model is restricted.")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = hub.files.get(repo, {}).get(filename)
                if data is None or (body and f"{repo}/{filename}" in hub.broken):
                    self.send_response(404 if data is None else 500)
                    self.send_header("X-Error-Code", "EntryNotFound" if data is None else "")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    hub.gets.append(f"{repo}/{filename}")
                    self.wfile.write(data)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub() -> FakeHub:
    hub = FakeHub({"thepatch/vanya_ai_dnb_0.1": MUSICGEN, "facebook/melodyflow-t24-30secs": MUSICGEN,
                   "google-t5/t5-base": {"config.json": b"{}", "model.safetensors": b"t5", "spiece.model": b"sp"}},
                  gated={"stabilityai/stable-audio-open-small"},
                  broken={"facebook/melodyflow-t24-30secs/compression_state_dict.bin"})
    yield hub
    hub.close()


def test_gated_model_fails_with_the_token_hint(tmp_path: Path, fake_hub: FakeHub) -> None:
    done = _pull(["--models", "jerry"], tmp_path, HF_ENDPOINT=fake_hub.url, HF_HUB_ETAG_TIMEOUT="5")
    assert done.returncode == 1
    assert ("stabilityai/stable-audio-open-small is gated: set HF_TOKEN to a token of an account that accepted the "
            "model's licence on its hub page") in done.stderr, done.stderr
    done = _pull(["--models", "jerry"], tmp_path, HF_ENDPOINT=fake_hub.url, HF_TOKEN="hf_test")
    assert "the HF_TOKEN given has no access" in done.stderr, done.stderr


def test_a_second_pull_fetches_only_what_is_still_missing(tmp_path: Path, fake_hub: FakeHub) -> None:
    args = ["--models", "thepatch/vanya_ai_dnb_0.1", "facebook/melodyflow-t24-30secs"]
    env = {"HF_ENDPOINT": fake_hub.url, "HF_HUB_DOWNLOAD_TIMEOUT": "5"}
    first = _pull(args, tmp_path, **env)
    assert first.returncode == 1, first.stderr  # the hub fails one file
    assert "facebook/melodyflow-t24-30secs/compression_state_dict.bin" in first.stderr
    got = list(fake_hub.gets)
    assert "thepatch/vanya_ai_dnb_0.1/state_dict.bin" in got and "facebook/melodyflow-t24-30secs/state_dict.bin" in got
    fake_hub.broken.clear()
    fake_hub.gets.clear()
    second = _pull(args, tmp_path, **env)
    assert second.returncode == 0, second.stderr
    assert fake_hub.gets[0] == "facebook/melodyflow-t24-30secs/compression_state_dict.bin"
    assert not set(got) & set(fake_hub.gets), "a file fetched by the first pull was fetched again"
    assert "google-t5/t5-base/model.safetensors" in fake_hub.gets  # the shared T5 comes along with any selection
    snap = tmp_path / "hub" / "models--facebook--melodyflow-t24-30secs" / "snapshots" / COMMIT
    assert (snap / "compression_state_dict.bin").read_bytes() == MUSICGEN["compression_state_dict.bin"]
