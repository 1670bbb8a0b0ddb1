"""Start-up paths: the console script in demo mode, and a model that cannot be loaded (503, never 500; the server
still answers everything that needs no model)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import jerry.models as jerry_models
from jerry.sao.demo import write_demo_checkpoint
from tests.jerry.jerry_helpers import JerryServer, jerry_settings, start_server
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_unloadable_model_is_503_with_a_reason_and_heals(tmp_path: Path, jerry: JerryServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jerry_models, "RETRY_FIRST_SECONDS", 0.3)
    # ...and with the queue gateway unreachable, which must not hold anything up either.
    settings = jerry_settings(tmp_path, demo_models=False, queue_url=f"http://127.0.0.1:{free_port()}")
    folder = settings.local_models_dir / "stabilityai" / "stable-audio-open-small"
    folder.mkdir(parents=True)  # no files in it yet
    (settings.local_models_dir / "t5-base").symlink_to(jerry.settings.local_models_dir / "t5-base")
    js, server = start_server(settings, expect=503)
    try:
        with httpx.Client(base_url=js.url, timeout=30) as http:
            health = http.get("/health")
            assert health.status_code == 503
            assert health.json()["status"] in ("error", "loading")
            assert "model_config.json" in (health.json().get("error") or health.json()["last_error"])
            assert health.json()["queue_lease"] in ("waiting", "retrying")
            r = http.post("/generate", json={"prompt": "x"})
            assert r.status_code == 503 and "model" in r.json()["error"]
            assert http.get("/model/info").status_code == 503
            assert http.post("/generate", json={}).status_code == 400
            assert http.post("/generate/loop", data={"prompt": "no tempo"}).status_code == 400
            assert http.get("/riffs/available").json()["available_keys"] == []
            assert http.get("/docs").status_code == 200

            write_demo_checkpoint(folder)  # the operator fixes the cause: the retry loads it, no restart
            deadline = time.monotonic() + 60
            while http.get("/health").status_code != 200:
                assert time.monotonic() < deadline, http.get("/health").json()
                time.sleep(0.2)
            assert http.post("/generate", json={"prompt": "x", "steps": 1, "seconds_total": 1}).status_code == 200
    finally:
        server.stop()


def test_jerry_server_console_script_demo(tmp_path: Path, jerry: JerryServer) -> None:
    exe = Path(sys.executable).with_name("jerry-server")
    if not exe.exists():
        pytest.skip("the project is not installed in this environment (pip install -e .)")
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(tmp_path), "LOCAL_MODELS_DIR": str(jerry.settings.local_models_dir),
           "QUEUE_URL": "", "DEVICE": "cpu", "DEMO_MODELS": "0", "LOG_LEVEL": "INFO"}
    log = tmp_path / "jerry.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(exe), "--demo", "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("jerry-server --demo never became healthy:\n" + log.read_text()[-3000:])
        r = httpx.post(f"http://127.0.0.1:{port}/generate", json={"prompt": "x 120bpm", "steps": 1, "seed": 1,
                                                                  "return_format": "base64"}, timeout=60)
        assert r.status_code == 200 and r.json()["metadata"]["demo"] is True
        assert "DEMO MODE" in log.read_text()
        assert sorted(p.name for p in (tmp_path / "riffs").iterdir())[0] == "c_100bpm.wav", "demo riffs written"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_listens_at_once_and_says_loading_while_the_model_loads(tmp_path: Path, jerry: JerryServer) -> None:
    """A model load that takes as long as it likes (here: its config is a named pipe nobody writes yet, like a
    first download still running) no longer keeps the port shut: /health answers 503 `loading` meanwhile."""
    from jerry.app import create_app
    from tests.servers import ThreadedServer

    settings = jerry_settings(tmp_path, demo_models=False)
    folder = settings.local_models_dir / "stabilityai" / "stable-audio-open-small"
    write_demo_checkpoint(folder)
    (settings.local_models_dir / "t5-base").symlink_to(jerry.settings.local_models_dir / "t5-base")
    config = folder / "model_config.json"
    real = config.read_bytes()
    config.unlink()
    os.mkfifo(config)
    server = ThreadedServer(create_app(settings), start_within=15).start()  # before: never started (load blocked)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            health = http.get("/health")
            assert health.status_code == 503 and health.json()["status"] == "loading", health.text
            assert health.json()["downloads"] == {}  # per-file progress of hub downloads (none: a local folder)
            assert http.get("/docs").status_code == 200
            fd = os.open(config, os.O_WRONLY)  # the "download" finishes: the loader reads the real config
            os.write(fd, real)
            os.close(fd)
            config.unlink()
            config.write_bytes(real)
            deadline = time.monotonic() + 60
            while http.get("/health").status_code != 200:
                assert time.monotonic() < deadline, http.get("/health").json()
                time.sleep(0.2)
    finally:
        if config.is_fifo():  # never leave the loader blocked on the pipe
            with contextlib.suppress(OSError):
                os.close(os.open(config, os.O_WRONLY | os.O_NONBLOCK))
        server.stop()
