"""gary4live's own client library (socket.io-client v4 for JavaScript, websocket transport, as the Max device uses
it) replays bang -> continue -> retry -> crop -> undo against a real gary (tests/node/gary4live.mjs)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.gary.gary_helpers import MODEL, wav_bytes

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


def test_gary4live_js_client(make_gary: Any, tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "socket.io-client").exists():
        pytest.skip("node or tests/node/node_modules missing (tests/run.sh installs them)")
    gary = make_gary()
    wav = tmp_path / "myBuffer.wav"
    wav.write_bytes(wav_bytes(3.0))
    proc = subprocess.run([node, str(NODE_DIR / "gary4live.mjs"), gary.url, str(wav), MODEL, "1"], cwd=NODE_DIR,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    summary = lines[-1]
    assert summary["done"] is True
    events = [line["event"] for line in lines[:-1]]
    for needed in ("queue_status", "progress_update", "audio_processed", "music_continued", "music_retried",
                   "update_cropped_audio_complete"):
        assert needed in events, events
    queue = next(line["data"] for line in lines if line.get("event") == "queue_status")
    assert {"message", "position", "total_queued", "estimated_seconds"} <= queue.keys()
    bang, cont, retry, undone = summary["lengths"]
    assert cont == retry and cont > bang and undone == bang  # undo returns to the retry's input
