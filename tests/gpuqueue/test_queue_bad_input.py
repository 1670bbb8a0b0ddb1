"""Bad input gets a 4xx with a clear message and changes nothing in Redis."""

from __future__ import annotations

import httpx
import pytest
import redis as redis_sync

from tests.gpuqueue.gq_helpers import queue_keys

BAD_REQUESTS: list[tuple[str, str, object, int, str]] = [
    # (method, path, json body, expected status, substring of the message)
    ("POST", "/nolane/tasks", {"session_id": "s", "task_type": "process_audio"}, 404, "unknown lane 'nolane'"),
    ("GET", "/nolane/tasks/s", None, 404, "unknown lane"),
    ("POST", "/nolane/task/status", {"session_id": "s", "status": "completed"}, 404, "unknown lane"),
    ("POST", "/tasks", {"session_id": "s", "vram_mb": -5}, 400, "vram_mb: Input should be greater than 0"),
    ("POST", "/tasks", {"session_id": "s", "vram_mb": 0}, 400, "vram_mb"),
    ("POST", "/tasks", {"session_id": "s", "vram_mb": "9000"}, 400, "vram_mb: Input should be a valid integer"),
    ("POST", "/tasks", {"session_id": "s", "vram_mb": 2.5}, 400, "vram_mb"),
    ("POST", "/tasks", {"session_id": "s", "vram_mb": 10**9}, 400, "vram_mb"),
    ("POST", "/tasks", {"session_id": "s", "vram_mb": 20000}, 422, "largest GPU it may use has 10000 MB"),
    ("POST", "/tasks", {"task_type": "process_audio"}, 400, "session_id: Field required"),
    ("POST", "/tasks", {"session_id": 12345}, 400, "session_id: Input should be a valid string"),
    ("POST", "/tasks", {"session_id": "../../etc/passwd"}, 400, "session_id: String should match pattern"),
    ("POST", "/tasks", {"session_id": "a b"}, 400, "session_id"),
    ("POST", "/tasks", {"session_id": "x" * 129}, 400, "session_id"),
    ("POST", "/tasks", {"session_id": "s", "task_type": ["process_audio"]}, 400, "task_type"),
    ("POST", "/tasks", {"session_id": "s", "data": 17}, 400, "data"),
    ("POST", "/tasks", {"session_id": "s", "data": "x" * 40000}, 400, "data is 40000 characters"),
    ("POST", "/tasks", {"session_id": "s", "callback_url": "ftp://host/x"}, 400, "callback_url must be an http(s) URL"),
    ("POST", "/tasks", {"session_id": "s", "callback_url": "http://"}, 400, "callback_url"),
    # a key holder must not make the gateway POST to arbitrary hosts (SSRF): only GARY_URL's host and loopback
    ("POST", "/tasks", {"session_id": "s2", "callback_url": "http://169.254.169.254/x"}, 403, "is not allowed"),
    ("POST", "/tasks", {"session_id": "s", "gpus": []}, 400, "gpus"),
    ("POST", "/tasks", {"session_id": "s", "gpus": ["nope"]}, 400, "no registered GPU matches"),
    ("POST", "/tasks", {"session_id": "s", "client_key": "x y"}, 400, "client_key"),
    ("POST", "/tasks", [1, 2, 3], 400, "Input should be a valid dictionary"),
    ("POST", "/task/status", {"session_id": "s", "status": "done"}, 400, "status: Input should be 'processing'"),
    ("POST", "/task/status", {"session_id": "s"}, 400, "status: Field required"),
    ("POST", "/task/status", {"session_id": "ghost", "status": "completed"}, 404, "no task 'ghost'"),
    ("POST", "/task/status", {"session_id": "s", "status": "completed", "fencing_token": 99}, 409, "stale fencing"),
    ("POST", "/task/status", {"session_id": "s", "status": "failed", "fencing_token": -1}, 400, "fencing_token"),
    ("DELETE", "/tasks/ghost", None, 404, "no task 'ghost'"),
    ("POST", "/tasks/ghost/heartbeat", {}, 404, "no task 'ghost'"),
    ("GET", "/tasks/ghost", None, 404, "no task 'ghost'"),
    ("POST", "/leases", {"model": "m", "lane": "generation"}, 400, "owner: Field required"),
    ("POST", "/leases", {"model": "m", "lane": "Generation!", "owner": "w"}, 400, "lane"),
    ("POST", "/leases", {"model": "m", "lane": "nolane", "owner": "w"}, 404, "unknown lane"),
    ("POST", "/leases", {"model": "m", "lane": "generation", "owner": "w", "resident": "yes"}, 400, "resident"),
    ("POST", "/leases", {"model": "m" * 300, "lane": "generation", "owner": "w"}, 400, "model"),
    ("GET", "/leases/nocolon", None, 404, "malformed lease id"),
    ("GET", "/leases/generation:ghost?wait=99", None, 400, "wait"),
    ("POST", "/leases/generation:ghost/release", {"outcome": "maybe"}, 400, "outcome"),
    ("POST", "/gpus", {"gpu_id": "g1", "capacity_mb": -1}, 400, "capacity_mb"),
    ("POST", "/gpus", {"gpu_id": "bad id!", "capacity_mb": 100}, 400, "gpu_id"),
]


@pytest.fixture
def gateway_url(make_gateway) -> str:
    return make_gateway(queue_gpus="gpu0=10000", queue_poll_ttl_seconds=60).url


def test_bad_requests_are_refused_and_nothing_is_stored(gateway_url: str, http: httpx.Client,
                                                        rdb: redis_sync.Redis) -> None:
    http.post(f"{gateway_url}/tasks", json={"session_id": "s", "vram_mb": 1000})  # something to (not) change
    before = queue_keys(rdb)
    for method, path, body, status, message in BAD_REQUESTS:
        r = http.request(method, gateway_url + path, json=body)
        assert r.status_code == status, (method, path, body, r.text)
        payload = r.json()
        assert payload["success"] is False and message in payload["error"], (method, path, body, payload)
        assert queue_keys(rdb) == before, (method, path, body)


def test_malformed_json_and_huge_payloads(gateway_url: str, http: httpx.Client, rdb: redis_sync.Redis) -> None:
    before = queue_keys(rdb)
    r = http.post(f"{gateway_url}/tasks", content=b'{"session_id": "s",', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    huge = b'{"session_id": "s", "data": "' + b"x" * 200_000 + b'"}'
    r = http.post(f"{gateway_url}/tasks", content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over 65536 bytes" in r.json()["error"]

    def chunks():  # no Content-Length: the limit applies to what is streamed
        for _ in range(100):
            yield b"x" * 1024

    r = http.post(f"{gateway_url}/tasks", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert queue_keys(rdb) == before


def test_status_changes_that_do_not_apply_are_conflicts(gateway_url: str, http: httpx.Client,
                                                        rdb: redis_sync.Redis) -> None:
    http.post(f"{gateway_url}/tasks", json={"session_id": "big", "vram_mb": 10000})
    http.post(f"{gateway_url}/tasks", json={"session_id": "waiting", "vram_mb": 10000})
    before = queue_keys(rdb)
    for status in ("processing", "completed"):
        r = http.post(f"{gateway_url}/task/status", json={"session_id": "waiting", "status": status})
        assert r.status_code == 409 and "is queued" in r.json()["error"]
    r = http.post(f"{gateway_url}/tasks/waiting/heartbeat", json={"fencing_token": 1})
    assert r.status_code == 409 and "stale fencing token" in r.json()["error"]
    r = http.post(f"{gateway_url}/task/status", json={"session_id": "big", "status": "completed", "fencing_token": 999})
    assert r.status_code == 409
    assert queue_keys(rdb) == before
