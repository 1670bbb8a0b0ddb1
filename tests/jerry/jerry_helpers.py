"""Helpers for jerry's tests: a real server on a free port (tests/servers.py's ThreadedServer) serving the demo model, which is
written in the published SAO-small layout and loaded through the production loading code; test audio and WAV checks."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

from garycommon.settings import MiB, Settings
from jerry.app import create_app
from tests.servers import ThreadedServer

MAX_UPLOAD = 2 * MiB


@dataclass
class JerryServer:
    url: str
    app: object
    settings: Settings

    @property
    def state(self):  # noqa: ANN201 - jerry.state.JerryState
        return self.app.state.jerry


def jerry_settings(root: Path, **extra: object) -> Settings:
    fields: dict[str, object] = {"data_dir": root / "data", "local_models_dir": root / "models",
                                 "jerry_riffs_dir": root / "riffs", "demo_models": True, "queue_url": "", "device": "cpu",
                                 "max_audio_bytes": MAX_UPLOAD, "api_keys": []}
    return Settings(**{**fields, **extra})


def start_server(settings: Settings, *, expect: int = 200) -> tuple[JerryServer, ThreadedServer]:
    """Serve `settings` on a free port; returns once /health answers `expect` (200 ready, 503 failed to load)."""
    deadline = time.monotonic() + 120
    app = create_app(settings)
    server = ThreadedServer(app).start()
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{server.url}/health", timeout=2)
            if r.status_code == expect and r.json()["status"] != "loading":
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        server.stop()
        raise RuntimeError(f"jerry /health did not answer {expect}")
    return JerryServer(server.url, app, app.state.jerry.settings), server


def wav_bytes(seconds: float = 2.0, sr: int = 44100, channels: int = 2, freq: float = 220.0, fmt: str = "WAV",
              subtype: str = "PCM_16") -> bytes:
    """A test tone file (stereo channels differ, so a mono down-mix would be visible)."""
    t = np.arange(int(seconds * sr)) / sr
    chans = [0.4 * np.sin(2 * np.pi * freq * (1 + 0.5 * c) * t) for c in range(channels)]
    buf = io.BytesIO()
    sf.write(buf, np.stack(chans, axis=1).astype(np.float32), sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def read_wav(data: bytes) -> tuple[sf._SoundFileInfo, np.ndarray]:
    info = sf.info(io.BytesIO(data))
    audio, _ = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    return info, audio


def assert_jerry_wav(data: bytes, samples: int | None = None) -> np.ndarray:
    """44.1 kHz, stereo, 16-bit PCM (and exactly `samples` long when given)."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    info, audio = read_wav(data)
    assert (info.samplerate, info.channels, info.subtype) == (44100, 2, "PCM_16")
    if samples is not None:
        assert info.frames == samples
    return audio
