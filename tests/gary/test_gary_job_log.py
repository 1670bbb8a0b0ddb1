"""A failed job is one log line naming its job id, session and reason (issue 14, item 14) — no traceback, no
repeats — while the client gets its `error` event."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.gary.gary_helpers import recorder, wav_b64


async def test_a_failed_job_is_one_line_with_job_session_and_reason(make_gary: Any, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    broken = tmp_path / "models" / "thepatch" / "broken-model"  # a checkpoint that cannot be loaded: the job fails
    broken.mkdir(parents=True)
    for name in ("state_dict.bin", "compression_state_dict.bin"):
        (broken / name).write_bytes(b"not a checkpoint")
    g = make_gary(gary_output_seconds=1.5, demo_models=False, local_models_dir=tmp_path / "models")
    caplog.set_level(logging.INFO)
    rec = await recorder(g.url)
    try:
        await rec.emit("process_audio_request", {"audio_data": wav_b64(1.0), "model_name": "thepatch/broken-model",
                                                 "prompt_duration": 1})
        ack = await rec.wait("process_audio_received", within=30)
        err = await rec.wait("error", within=60)
    finally:
        await rec.close()
    sid = ack["session_id"]
    lines = [r for r in caplog.records if sid in r.getMessage() and "failed" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    line = lines[0]
    assert line.levelno == logging.WARNING and line.exc_info is None
    assert "job " in line.getMessage() and err["message"].split(":")[0][:30] in line.getMessage()
