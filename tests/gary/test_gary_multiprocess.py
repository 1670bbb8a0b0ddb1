"""Two gary processes behind one Redis (and one gateway, one Mongo): a result produced in one process reaches a
client connected to the other — through the session's room and through the asking connection's own id."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gary.gary_helpers import MODEL, OUTPUT_SECONDS, Gary, recorder, wav_b64
from tests.servers import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shared(mongo_server: Any) -> dict[str, str]:
    return {"mongodb_url": mongo_server.url, "mongodb_db": f"multi_{uuid.uuid4().hex[:8]}"}


@pytest.fixture(scope="module")
def other_process(redis_server: Any, gateway: str, gary_models: Path, transfer_dir: Path, shared: dict[str, str],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`gary-server` as its own OS process (the console script's entry point), configured through the environment."""
    port = free_port()
    data = tmp_path_factory.mktemp("gary-b")
    env = {**os.environ, "REDIS_URL": redis_server.url, "QUEUE_URL": gateway, "SESSION_STORE": "mongo",
           "MONGODB_URL": shared["mongodb_url"], "MONGODB_DB": shared["mongodb_db"], "DATA_DIR": str(data),
           "LOCAL_MODELS_DIR": str(gary_models), "TRANSFER_DIR": str(transfer_dir), "DEVICE": "cpu",
           "GARY_OUTPUT_SECONDS": str(OUTPUT_SECONDS), "GARY_URL": f"http://127.0.0.1:{port}",
           "GARY_HEARTBEAT_SECONDS": "0.3", "OMP_NUM_THREADS": "1", "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
    log = (data / "gary-b.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from gary.cli import main; sys.exit(main())",
                             "--host", "127.0.0.1", "--port", str(port), "--demo"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, 90, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.seek(0)
        text = log.read()
        log.close()
        assert "Traceback" not in text, text[-3000:]


@pytest.fixture(scope="module")
def gary_a(make_gary: Any, gateway: str, other_process: str, shared: dict[str, str]) -> Gary:
    """This process's gary; the gateway calls back the OTHER process for everything it enqueues."""
    return make_gary(queue_url=gateway, session_store="mongo", gary_url=other_process, gary_heartbeat_seconds=0.3,
                     **shared)


async def test_result_from_the_other_process_reaches_the_asking_connection(gary_a: Gary, other_process: str) -> None:
    rec = await recorder(gary_a.url)
    try:
        mark = rec.mark()
        await rec.emit("process_audio_request", {"audio_data": wav_b64(2.0), "model_name": MODEL, "prompt_duration": 1})
        sid = (await rec.wait("process_audio_received", after=mark))["session_id"]
        result = await rec.wait("audio_processed", after=mark, within=90)
        assert result["session_id"] == sid
        assert [d["progress"] for d in rec.of("progress_update") if d["session_id"] == sid][-1] == 100
        # it really ran in the other process
        job = gary_a.call(gary_a.ctx.jobs.current(sid))
        assert job.ran_on and job.ran_on != f"{socket.gethostname()}:{os.getpid()}"
        async with httpx.AsyncClient(base_url=other_process) as http:
            assert (await http.get(f"/api/juce/poll_status/{sid}")).json()["status"] == "completed"
    finally:
        await rec.close()


async def test_room_member_on_one_process_hears_a_job_submitted_to_the_other(gary_a: Gary, other_process: str) -> None:
    rec = await recorder(gary_a.url)
    try:
        mark = rec.mark()
        await rec.emit("update_cropped_audio", {"audio_data": wav_b64(2.0)})
        sid = (await rec.wait("update_cropped_audio_complete", after=mark))["session_id"]
        async with httpx.AsyncClient(base_url=other_process, timeout=30) as http:
            r = await http.post("/api/juce/continue_music", json={"session_id": sid, "prompt_duration": 1})
            assert r.status_code == 200, r.text
        continued = await rec.wait("music_continued", after=mark, within=90)
        assert continued["session_id"] == sid and continued["job_id"] == r.json()["job_id"]
    finally:
        await rec.close()
