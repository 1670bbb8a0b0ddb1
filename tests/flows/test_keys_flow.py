"""Issue 13 through `gary-stack up --demo` with the features on (API_KEYS=two friends' keys, ADMIN_KEY): keys protect
every entry point of gary in each form an unmodified client can carry, jobs never jam behind the services' own leases,
friends are counted apart, only the operator changes GPUs, forged callbacks and leases are refused, callbacks go only
to gary, and a hub config can't read the server's environment."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_sync
import yaml

from garycommon import rediskeys
from garycommon.keys import key_identity
from tests.flows.stack_harness import MODEL, Stack, running_stack, socketio_client, wav_b64, wav_bytes

pytestmark = pytest.mark.slow
FRIEND1, FRIEND2, ADMIN = "friend-one-key", "friend-two-key", "operator-admin-key"
SECRET = "s3cret-value-from-the-server-env"
LEAKY_MODEL = "thepatch/leaky_cfg_test"
NODE_DIR = Path(__file__).resolve().parents[1] / "node"
DONE_WITHIN = 120.0


def write_leaky_checkpoint(models_dir: Path) -> None:
    """An allowed owner's repo whose xp.cfg names its text encoder `${oc.env:LEAK_ME}` (the issue's reproduction),
    marked as the demo checkpoint gary would write for that name, so demo mode keeps it."""
    import torch

    from gary.catalog import size_of
    from gary.musicgen.checkpoint import LM_FILE
    from gary.musicgen.demo import write_demo_checkpoint

    folder = models_dir / LEAKY_MODEL
    write_demo_checkpoint(folder, size=size_of(LEAKY_MODEL), stereo=False, seed=zlib.crc32(LEAKY_MODEL.encode()) % 10_000)
    pkg = torch.load(folder / LM_FILE, map_location="cpu", weights_only=False)
    cfg = yaml.safe_load(pkg["xp.cfg"])
    cfg["conditioners"]["description"]["t5"]["name"] = "${oc.env:LEAK_ME}"
    pkg["xp.cfg"] = yaml.safe_dump(cfg)
    torch.save(pkg, folder / LM_FILE)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("keys-stack")
    write_leaky_checkpoint(workdir / "data" / "demo-models")
    with running_stack(workdir, API_KEYS=f"{FRIEND1},{FRIEND2}", ADMIN_KEY=ADMIN, LEAK_ME=SECRET) as running:
        yield running


def juce_body(**extra: Any) -> dict[str, Any]:
    return {"audio_data": wav_b64(4.0), "model_name": MODEL, "prompt_duration": 2, **extra}


def poll_done(http: httpx.Client, prefix: str, session_id: str, *, allow_failed: bool = False) -> dict[str, Any]:
    deadline = time.monotonic() + DONE_WITHIN
    while True:
        r = http.get(f"{prefix}/api/juce/poll_status/{session_id}")
        assert r.status_code == 200, r.text
        body = r.json()
        if body["status"] == "completed" and body["audio_data"]:
            return body
        if body["status"] == "failed":
            assert allow_failed, f"job failed: {body['error']}"
            return body
        assert time.monotonic() < deadline, f"not done in {DONE_WITHIN:.0f} s: {body['status']} {body['queue_status']}"
        time.sleep(0.25)


def test_gary_http_needs_a_key_in_any_form_a_client_carries(stack: Stack) -> None:
    gary = stack.url("gary")
    with httpx.Client(base_url=gary, timeout=30) as http:
        for headers in ({}, {"X-API-Key": "not-a-key"}, {"Authorization": "Bearer not-a-key"}):
            r = http.post("/api/juce/process_audio", json=juce_body(), headers=headers)
            assert r.status_code == 401, r.text
            error = r.json()["error"]
            assert ("wrong API key" if headers else "needs an API key") in error
            assert "X-API-Key" in error and "/k/<key>" in error and "api_key" in error  # says how to send one
        r = http.get("/k/not-a-key/api/juce/poll_status/abc")
        assert r.status_code == 401
        for path in ("/api/latest_generated_audio/abc", "/api/warmup/status", "/console-api/queue"):
            assert http.get(path).status_code == 401, path
        # open on purpose: health, the console's page and files, the model list
        for path in ("/health", "/", "/console/console.js", "/api/models", "/console-api/config"):
            assert http.get(path).status_code == 200, path

        # each accepted form: header, bearer, ?api_key= and the base-URL prefix gary4juce can carry
        sessions = []
        for prefix, headers, params in (("", {"X-API-Key": FRIEND1}, {}), ("", {"Authorization": f"Bearer {FRIEND1}"}, {}),
                                        ("", {}, {"api_key": FRIEND2}), (f"/k/{FRIEND2}", {}, {})):
            r = http.post(f"{prefix}/api/juce/process_audio", json=juce_body(), headers=headers, params=params)
            assert r.status_code == 200 and r.json()["success"] is True, r.text
            sessions.append(r.json()["session_id"])
        # gary4juce's whole loop under its base URL http://host:port/k/<key>: results come back, jobs never jam
        base = f"/k/{FRIEND1}"
        for sid in sessions:
            poll_done(http, base, sid)
        sid = sessions[-1]
        for route, body in (("continue_music", {"session_id": sid, "model_name": MODEL, "prompt_duration": 2}),
                            ("retry_music", {"session_id": sid, "model_name": MODEL, "prompt_duration": 2}),
                            ("transform_audio", {"session_id": sid, "variation": "accordion_folk", "flowstep": 0.13})):
            r = http.post(f"{base}/api/juce/{route}", json=body)
            assert r.status_code == 200, r.text
            poll_done(http, base, sid)
        assert http.get(f"{base}/api/latest_generated_audio/{sid}").status_code == 200


def test_jobs_never_jam_and_friends_are_counted_apart(stack: Stack) -> None:
    """Issue item 1: many jobs in a row under one key (the second used to wait forever behind the residents)."""
    gary = stack.url("gary")
    rdb = redis_sync.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        with httpx.Client(base_url=gary, timeout=30, headers={"X-API-Key": FRIEND1}) as http:
            sids = []
            for _ in range(3):
                r = http.post("/api/juce/process_audio", json=juce_body())
                assert r.status_code == 200, r.text
                sids.append(r.json()["session_id"])
                poll_done(http, "", sids[-1])
        with httpx.Client(base_url=gary, timeout=30, headers={"X-API-Key": FRIEND2}) as http:
            r = http.post("/api/juce/process_audio", json=juce_body())
            other = r.json()["session_id"]
            poll_done(http, "", other)
        # the gateway counted each job under its friend's key (forwarded by gary), never under gary's credential
        for sid, friend in [(s, FRIEND1) for s in sids] + [(other, FRIEND2)]:
            key = rdb.hget(rediskeys.gq_task("generation", sid), "key")
            assert key == key_identity(friend), (sid, key)
        # the services' resident leases count against no user key
        resident = rdb.smembers(rediskeys.gq_resident())
        assert resident, "gary and jerry hold resident leases"
        for tid in resident:
            lane, sid = tid.split(":", 1)
            assert rdb.hget(rediskeys.gq_task(lane, sid), "key") == "open", tid
        stats = rdb.hgetall(rediskeys.gq_keystats())
        assert all(int(v) == 0 for k, v in stats.items() if k.startswith("a:k")), stats  # nothing left on a key
    finally:
        rdb.close()


def test_socketio_handshake_needs_a_key(stack: Stack) -> None:
    gary = stack.url("gary")

    async def attempt(url: str, auth: dict[str, str] | None) -> str:
        import socketio

        client = socketio_client()
        why: list[Any] = []
        client.on("connect_error", lambda data: why.append(data))
        try:
            await client.connect(url, socketio_path="socket.io", transports=["websocket"], auth=auth, wait_timeout=10)
        except socketio.exceptions.ConnectionError as exc:
            return f"refused: {exc} {why}"
        try:
            got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            client.on("process_audio_received", lambda d: got.done() or got.set_result(d))
            await client.emit("process_audio_request", {"audio_data": wav_b64(3.0), "model_name": MODEL,
                                                        "prompt_duration": 2})
            data = await asyncio.wait_for(got, 20)
            return f"accepted {data['session_id']}"
        finally:
            await client.disconnect()

    async def main() -> list[str]:
        return [await attempt(gary, None), await attempt(gary, {"api_key": "nope"}),
                await attempt(gary, {"api_key": FRIEND1}), await attempt(f"{gary}/?api_key={FRIEND2}", None)]

    no_key, wrong, by_auth, by_query = asyncio.run(main())
    assert no_key.startswith("refused") and "needs an API key" in no_key and "api_key" in no_key, no_key
    assert wrong.startswith("refused") and "wrong API key" in wrong, wrong
    assert by_auth.startswith("accepted") and by_query.startswith("accepted"), (by_auth, by_query)


def test_gary4live_with_the_key_in_its_url(stack: Stack, tmp_path: Path) -> None:
    """gary4live's own client library: the user types `http://host:port/?api_key=KEY` as the backend URL."""
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "socket.io-client").exists():
        pytest.fail("node and tests/node/node_modules are needed (tests/run.sh installs them)")
    wav = tmp_path / "myBuffer.wav"
    wav.write_bytes(wav_bytes(4.0))
    refused = subprocess.run([node, str(NODE_DIR / "gary4live.mjs"), stack.url("gary"), str(wav), MODEL, "2"],
                             cwd=NODE_DIR, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 4 and "needs an API key" in refused.stderr, refused.stderr
    ok = subprocess.run([node, str(NODE_DIR / "gary4live.mjs"), f"{stack.url('gary')}/?api_key={FRIEND1}", str(wav),
                         MODEL, "2"], cwd=NODE_DIR, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, f"{ok.stdout[-3000:]}\n{ok.stderr[-2000:]}\n{stack.log_tail()}"
    assert json.loads(ok.stdout.splitlines()[-1])["done"] is True


def test_only_the_operator_changes_gpus(stack: Stack) -> None:
    queue = stack.url("queue")
    with httpx.Client(base_url=queue, timeout=10) as http:
        before = http.get("/queue", headers={"X-API-Key": FRIEND1}).json()["gpus"]
        for headers in ({"X-API-Key": FRIEND1}, {}):
            assert http.delete("/gpus/default", headers=headers).status_code == 401
            r = http.post("/gpus", json={"gpu_id": "fake", "capacity_mb": 999_999}, headers=headers)
            assert r.status_code == 401 and "ADMIN_KEY" in r.json()["error"]
        assert http.get("/queue", headers={"X-API-Key": FRIEND1}).json()["gpus"] == before
        admin = {"X-API-Key": ADMIN}
        assert http.post("/gpus", json={"gpu_id": "extra/0", "capacity_mb": 1000}, headers=admin).status_code == 200
        for gpu in before:  # a real GPU drains the placeholder: the operator puts it back for the other tests
            r = http.post("/gpus", json={"gpu_id": gpu["id"], "capacity_mb": gpu["capacity_mb"]}, headers=admin)
            assert r.status_code == 200
        assert http.delete("/gpus/extra/0", headers=admin).status_code == 200
        wait = time.monotonic() + 10
        while {g["id"]: g["capacity_mb"] for g in http.get("/queue", headers=admin).json()["gpus"]
               if g["capacity_mb"]} != {g["id"]: g["capacity_mb"] for g in before}:
            assert time.monotonic() < wait, http.get("/queue", headers=admin).json()["gpus"]
            time.sleep(0.2)


def test_forged_callbacks_leases_and_callback_urls_are_refused(stack: Stack) -> None:
    gary, terry, queue = stack.url("gary"), stack.url("terry"), stack.url("queue")
    with httpx.Client(timeout=60) as http:
        r = http.post(f"{gary}/api/juce/process_audio", json=juce_body(), headers={"X-API-Key": FRIEND2})
        assert r.status_code == 200, r.text
        sid = r.json()["session_id"]
        with httpx.Client(timeout=60, headers={"X-API-Key": FRIEND2}) as mine:
            done = poll_done(mine, gary, sid)
        # a forged `ready` / `failed` (unsigned, or signed with a guess) changes nothing
        for headers in ({}, {"X-Gary-Signature": f"t={int(time.time())},v1={'0' * 64}"}):
            for status in ("ready", "failed"):
                r = http.post(f"{gary}/task_notification", json={
                    "session_id": sid, "status": status, "type": "process_audio", "lease_id": f"generation:{sid}",
                    "fencing_token": 1, "job_id": done.get("job_id") or "x"},
                    headers={"X-Notification-ID": f"forged-{status}", **headers})
                assert r.status_code == 401 and "signature" in r.json()["message"].lower(), r.text
        after = http.get(f"{gary}/api/juce/poll_status/{sid}", headers={"X-API-Key": FRIEND2}).json()
        assert after["status"] == "completed" and after["audio_data"] == done["audio_data"]

        # terry runs under a caller-named lease only when the gateway says it is held with that token
        body = {"audio": wav_b64(2.0), "variation": "accordion_folk", "session_id": "forged-lease",
                "lease_id": f"transform:{sid}", "fencing_token": 1}
        r = http.post(f"{terry}/transform", json=body, headers={"X-API-Key": FRIEND1})
        assert r.status_code == 409 and "not granted" in r.json()["error"], r.text
        r = http.post(f"{terry}/transform", json={**body, "lease_id": "transform:nobody-holds-this"},
                      headers={"X-API-Key": FRIEND1})
        assert r.status_code == 409, r.text
        r = http.post(f"{terry}/transform", json={k: v for k, v in body.items() if k not in ("lease_id", "fencing_token")},
                      headers={"X-API-Key": FRIEND1})
        assert r.status_code == 200 and r.json()["metadata"]["lease"] == "gateway", r.text  # its own lease instead

        # the gateway calls back only gary's configured URL: not jerry's /cleanup, not another path or query
        jerry_port = stack.ports["jerry"]
        for url in (f"http://127.0.0.1:{jerry_port}", f"http://127.0.0.1:{jerry_port}/any/internal/path?x=",
                    f"{gary}/any/internal/path"):
            r = http.post(f"{queue}/tasks", json={"session_id": "cb-test", "callback_url": url, "vram_mb": 100},
                          headers={"X-API-Key": FRIEND1})
            assert r.status_code == 403, r.text


def test_a_hub_config_cannot_read_the_server_environment(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url("gary"), timeout=30, headers={"X-API-Key": FRIEND1}) as http:
        r = http.post("/api/juce/process_audio", json=juce_body(model_name=LEAKY_MODEL))
        assert r.status_code == 200, r.text
        failed = poll_done(http, "", r.json()["session_id"], allow_failed=True)
    assert failed["status"] == "failed"
    assert "text encoder" in failed["error"] and SECRET not in failed["error"], failed["error"]
    assert SECRET not in json.dumps(failed)


def test_keys_never_reach_the_logs(stack: Stack) -> None:
    """Keys sent in URLs (/k/<key>/, ?api_key=) are moved into a header before anything logs the request (runs last:
    every other test of this module has sent its keys by now)."""
    log = stack.log_path.read_text(errors="replace")
    assert "/api/juce/" in log and "/socket.io/" in log  # the access log is on
    for key in (FRIEND1, FRIEND2, ADMIN):
        assert key not in log
