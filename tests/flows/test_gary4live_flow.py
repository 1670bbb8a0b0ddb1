"""gary4live (Max for Live) through the real stack: its own client library, socket.io-client 4 for JavaScript, plays
three whole sessions in a row (bang, continue, retry, transform, undo, crop, bang again, reset) and reconnects in the
middle of a generation. The script lives in tests/node/gary4live_session.mjs; every step is bounded."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.flows.stack_harness import MODEL, STEP_SECONDS, Stack, wav_bytes

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
ROUNDS = 3
STEPS = ("bang", "continue", "retry", "transform", "undo", "crop", "bang again", "reset")

pytestmark = pytest.mark.slow


def test_gary4live_plays_three_sessions_and_survives_a_reconnect(stack: Stack, tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "socket.io-client").exists():
        pytest.fail("node and tests/node/node_modules are needed (tests/run.sh installs them)")
    buffer, cropped = tmp_path / "myBuffer.wav", tmp_path / "cropped.wav"
    buffer.write_bytes(wav_bytes(8.0))
    cropped.write_bytes(wav_bytes(4.0, rate=48000))
    proc = subprocess.run([node, str(NODE_DIR / "gary4live_session.mjs"), stack.url("gary"), str(buffer), str(cropped),
                           MODEL, "2", str(ROUNDS)], cwd=NODE_DIR, capture_output=True, text=True, timeout=900)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}\n--- stack log ---\n{stack.log_tail()}"
    assert lines[-1] == {"done": True}
    steps = [line for line in lines if "step" in line]
    expected = [f"{name} #{n}" for n in range(1, ROUNDS + 1) for name in STEPS] + ["reconnect mid-generation"]
    assert [s["step"] for s in steps] == expected
    slow = [(s["step"], round(s["seconds"], 1)) for s in steps if s["seconds"] > STEP_SECONDS]
    assert not slow, f"steps over {STEP_SECONDS:.0f} s: {slow}"
    sessions = [s["session_id"] for s in steps if s["step"].startswith("bang")]
    assert len(set(sessions)) == len(sessions) == 2 * ROUNDS  # every bang (and bang again) is a new session
    assert {q["status"] for q in lines if q.get("event") == "queue_status"} >= {"ready"}
