"""A second GPU host joins the first, on one machine: the first host's services configured by docker-compose.yml's
environment, the worker's by docker-compose.worker.yml's (the compose service names and published ports mapped to
loopback ports), one Redis, one MongoDB and one gateway with both "cards" registered. Jobs sent to each gary run on
that gary (its own /metrics counts them), and a session made on one host is served by the other's gary.
"""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import yaml

from tests.servers import free_port, wait_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("terry", "jerry", "gary")
CLI = {"queue": "gpuqueue.cli", "terry": "terry.cli", "jerry": "jerry.cli", "gary": "gary.cli"}


def _env(path: str, service: str, variables: dict[str, str], urls: dict[str, str]) -> dict[str, str]:
    """The service's compose environment, ${VAR} interpolated, each compose host:port rewritten to its test URL."""
    raw = yaml.safe_load((ROOT / path).read_text())["services"][service]["environment"]
    var = re.compile(r"\$\{([A-Za-z_]+)(?::?[-?][^}]*)?\}")  # interpolated after parsing, as Compose does
    env = {k: var.sub(lambda m: variables.get(m[1], ""), str(v)) for k, v in raw.items()}
    for key, value in env.items():
        for hostport, url in urls.items():
            value = re.sub(rf"^(\w+)://{re.escape(hostport)}/?", url, value)
        env[key] = value
    return env


def _local(tmp: Path, host: str, service: str) -> dict[str, str]:
    """The container paths (volumes) as folders of this test: one transfer folder per host, as compose shares it."""
    return {"DATA_DIR": str(tmp / f"{host}-{service}"), "TRANSFER_DIR": str(tmp / f"{host}-transfer"),
            "HF_HOME": str(tmp / "hf")}


def _wav_b64(seconds: float = 2.0, sr: int = 32000) -> str:
    t = np.arange(int(sr * seconds)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def two_hosts(redis_server: Any, mongo_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("two-hosts")
    ports = {f"{h}-{s}": free_port() for h in ("a", "b") for s in SERVICES} | {"queue": free_port()}
    procs: list[tuple[str, subprocess.Popen, Path]] = []
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "QUEUE_", "GARY_", "JERRY_", "TERRY_"))}
    base.update(DEMO_MODELS="1", HF_HUB_OFFLINE="1", DEVICE="cpu", OMP_NUM_THREADS="1", GARY_OUTPUT_SECONDS="4",
                PYTHONUNBUFFERED="1", HF_HOME=str(tmp / "hf"))

    def start(name: str, env: dict[str, str], port: int) -> None:
        log = tmp / f"{name}.log"
        argv = [sys.executable, "-c", f"import sys; from {CLI[name.split('-')[-1]]} import main; sys.exit(main())",
                "--host", "127.0.0.1", "--port", str(port)]
        procs.append((name, subprocess.Popen(argv, env={**base, **env}, cwd=tmp, stdout=log.open("w"),
                                             stderr=subprocess.STDOUT), log))

    import redis

    redis.Redis.from_url(redis_server.url).flushall()  # this folder's own redis-server (conftest.py): start from nothing
    base["MONGODB_DB"] = f"two_hosts_{os.getpid()}"
    mongo_url = mongo_server.url
    common = {"redis:6379": redis_server.url.rsplit("/", 1)[0] + "/", "mongo:27017": mongo_url,
              "queue:8085": f"http://127.0.0.1:{ports['queue']}"}
    try:
        # host A (docker-compose.yml): the gateway knows both cards and may call both garys back
        a_urls = common | {f"{s}:{p}": f"http://127.0.0.1:{ports[f'a-{s}']}" for s, p in
                           (("gary", 8000), ("terry", 8002), ("jerry", 8005))}
        # what the README asks of the first host: the worker's gary as a callback base (its port differs here)
        variables = {"QUEUE_CALLBACK_HOSTS": f"http://127.0.0.1:{ports['b-gary']}", "DEMO_MODELS": "1",
                     "LOG_LEVEL": "WARNING"}
        queue_env = _env("docker-compose.yml", "queue", variables, a_urls)
        start("queue", {**queue_env, "QUEUE_GPUS": "hostA/0=24000,hostB/0=24000"}, ports["queue"])
        wait_port(ports["queue"], 60, procs[-1][1])
        for s in SERVICES:
            start(f"a-{s}", {**_env("docker-compose.yml", s, variables, a_urls), **_local(tmp, "a", s)}, ports[f"a-{s}"])
        # host B (docker-compose.worker.yml): PRIMARY_HOST is host A, WORKER_HOST itself
        b_vars = variables | {"PRIMARY_HOST": "primary", "WORKER_HOST": "worker"}
        b_urls = {"primary:6379": common["redis:6379"], "primary:27017": mongo_url, "primary:8085": common["queue:8085"],
                  "worker:8000": f"http://127.0.0.1:{ports['b-gary']}"}
        b_urls |= {f"{s}:{p}": f"http://127.0.0.1:{ports[f'b-{s}']}" for s, p in (("terry", 8002), ("jerry", 8005))}
        for s in SERVICES:
            env = _env("docker-compose.worker.yml", s, b_vars, b_urls)
            assert env["REDIS_URL"] == common["redis:6379"] + "0" and env["QUEUE_URL"] == common["queue:8085"]
            start(f"b-{s}", {**env, **_local(tmp, "b", s)}, ports[f"b-{s}"])
        with httpx.Client(timeout=10) as http:
            for name, proc, log in procs:
                port = ports[name]
                deadline = time.monotonic() + 300
                while True:
                    assert proc.poll() is None, f"{name} exited:\n{log.read_text()[-3000:]}"
                    try:
                        if http.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    assert time.monotonic() < deadline, f"{name} never healthy:\n{log.read_text()[-3000:]}"
                    time.sleep(1)
        yield {"ports": ports, "logs": {n: log for n, _, log in procs}}
    finally:
        for _, proc, _ in procs:
            proc.terminate()
        for _, proc, _ in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _jobs_completed(http: httpx.Client, port: int) -> float:
    text = http.get(f"http://127.0.0.1:{port}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("gary_jobs_total{") and 'outcome="completed"' in line)


def _generate(http: httpx.Client, port: int) -> str:
    r = http.post(f"http://127.0.0.1:{port}/api/juce/process_audio",
                  json={"audio_data": _wav_b64(), "model_name": "thepatch/vanya_ai_dnb_0.1", "prompt_duration": 1})
    assert r.status_code == 200, r.text
    return r.json()["session_id"]


def _wait_done(http: httpx.Client, port: int, sid: str) -> dict[str, Any]:
    end = time.monotonic() + 240
    while time.monotonic() < end:
        poll = http.get(f"http://127.0.0.1:{port}/api/juce/poll_status/{sid}").json()
        if poll.get("status") == "completed" and poll.get("audio_data"):
            return poll
        assert poll.get("status") != "failed", poll
        time.sleep(0.5)
    pytest.fail(f"job {sid} did not complete on :{port}: {poll}")


def test_jobs_land_on_both_hosts_and_either_gary_serves_the_session(two_hosts: dict[str, Any]) -> None:
    ports = two_hosts["ports"]
    try:
        _check(ports)
    except BaseException:
        for name, log in two_hosts["logs"].items():
            print(f"===== {name}\n{log.read_text()[-2500:]}")
        raise


def _check(ports: dict[str, int]) -> None:
    with httpx.Client(timeout=60) as http:
        sid_a = _generate(http, ports["a-gary"])
        sid_b = _generate(http, ports["b-gary"])
        _wait_done(http, ports["a-gary"], sid_a)
        _wait_done(http, ports["b-gary"], sid_b)
        assert _jobs_completed(http, ports["a-gary"]) >= 1, "host A's gary ran none of its jobs"
        assert _jobs_completed(http, ports["b-gary"]) >= 1, "the worker's gary ran none of its jobs"
        # the session made through the worker is served by the first host's gary (shared Redis + MongoDB)
        poll = http.get(f"http://127.0.0.1:{ports['a-gary']}/api/juce/poll_status/{sid_b}").json()
        assert poll["status"] == "completed" and poll["audio_data"], poll
        # both hosts' jerrys hold their resident lease on the one gateway
        queue = http.get(f"http://127.0.0.1:{ports['queue']}/metrics").text
        assert re.search(r'^gq_leases_held\{lane="resident"\} ([2-9]|\d\d)', queue, re.M), queue[:2000]
