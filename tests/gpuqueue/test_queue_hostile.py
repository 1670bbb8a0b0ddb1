"""Hostile bodies and impossible requests at the gateway: over-deep or non-finite JSON is a 400 before any parser
runs (the lease hot path included), an impossible VRAM request's status agrees with its code, and path-like GPU ids
are refused. Nothing is stored by any of them."""

from __future__ import annotations

import httpx
import pytest
import redis as redis_sync

from tests.gpuqueue.gq_helpers import queue_keys
from tests.hostile import assert_openapi_honest

DEEP = b"[" * 20000 + b"]" * 20000
JSON = {"content-type": "application/json"}


@pytest.mark.parametrize("path", ["/tasks", "/leases", "/task/status", "/gpus"])
def test_deep_and_non_finite_json_is_refused_before_parsing(make_gateway, http: httpx.Client, rdb: redis_sync.Redis,
                                                            path: str) -> None:
    url = make_gateway(queue_gpus="gpu0=10000").url
    before = queue_keys(rdb)
    deep = b'{"session_id": "s", "model": "m", "lane": "generation", "owner": "w", "data": ' + DEEP + b"}"
    r = http.post(url + path, content=deep, headers=JSON)
    assert r.status_code == 400 and "nested deeper than" in r.json()["error"], r.text
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        body = b'{"session_id": "s", "model": "m", "lane": "generation", "owner": "w", "vram_mb": ' + literal + b"}"
        r = http.post(url + path, content=body, headers=JSON)
        assert r.status_code == 400 and "finite" in r.json()["error"], r.text
    assert queue_keys(rdb) == before
    # the words inside strings are data, not numbers
    ok = http.post(f"{url}/tasks", json={"session_id": "nan-ok", "data": {"prompt": "NaN Infinity [[[["}})
    assert ok.status_code == 200, ok.text


def test_impossible_vram_status_agrees_with_code(make_gateway, http: httpx.Client, rdb: redis_sync.Redis) -> None:
    url = make_gateway(queue_gpus="gpu0=10000").url
    assert http.post(f"{url}/gpus", json={"gpu_id": "gpu0", "capacity_mb": 1}).status_code == 200  # a 1 MB card
    before = queue_keys(rdb)
    # the model's own size does not fit: capacity is missing, a bigger card may come -> 503 + Retry-After
    r = http.post(f"{url}/tasks", json={"session_id": "bang", "task_type": "process_audio", "model": "facebook/musicgen-small"})
    assert r.status_code == 503 and r.json()["code"] == "SERVICE_UNAVAILABLE", r.text
    assert "largest GPU it may use has 1 MB" in r.json()["error"] and int(r.headers["retry-after"]) > 0
    # the caller asked for more than any card has: a client error whose code says so
    r = http.post(f"{url}/leases", json={"model": "m", "lane": "generation", "owner": "w", "vram_mb": 5000})
    assert r.status_code == 422 and r.json()["code"] == "UNSATISFIABLE", r.text
    assert queue_keys(rdb) == before


@pytest.mark.parametrize("gpu_id", ["../../x", "/etc", "a//b", "..", "x/../y"])
def test_path_like_gpu_ids_are_refused(make_gateway, http: httpx.Client, rdb: redis_sync.Redis, gpu_id: str) -> None:
    url = make_gateway(queue_gpus="gpu0=10000").url
    before = queue_keys(rdb)
    r = http.post(f"{url}/gpus", json={"gpu_id": gpu_id, "capacity_mb": 100})
    assert r.status_code == 400 and "gpu_id" in r.json()["error"], r.text
    r = http.delete(f"{url}/gpus/" + gpu_id.replace("/", "%2F").replace(".", "%2E"))
    assert r.status_code == 400, r.text
    assert queue_keys(rdb) == before
    assert http.post(f"{url}/gpus", json={"gpu_id": "hostA/0", "capacity_mb": 100}).status_code == 200


def test_openapi_documents_what_is_sent_and_the_key_scheme(make_gateway, http: httpx.Client) -> None:
    url = make_gateway(queue_gpus="gpu0=10000", api_keys=["k1"], admin_key="adm").url
    spec = http.get(f"{url}/openapi.json").json()
    assert_openapi_honest(spec)
    r = http.post(f"{url}/gpus", json={"gpu_id": "g", "capacity_mb": "lots"}, headers={"X-API-Key": "adm"})
    assert r.status_code == 400 and "400" in spec["paths"]["/gpus"]["post"]["responses"]
    assert http.post(f"{url}/gpus", json={"gpu_id": "g", "capacity_mb": 1}).status_code == 401
    assert http.post(f"{url}/gpus", json={"gpu_id": "g", "capacity_mb": 1}, headers={"X-API-Key": "k1"}).status_code == 401
