"""The compatible routes (gary's and lane callers' shapes), the lease API, GPUs, keys and the operator endpoints."""

from __future__ import annotations

import json

import httpx
import redis as redis_sync

from garycommon import rediskeys
from tests.gpuqueue.gq_helpers import CallbackSink, wait_until

GARY_DATA = json.dumps({"model_name": "facebook/musicgen-small", "prompt_duration": 6, "top_k": 250,
                        "temperature": 1.0, "cfg_coef": 3.0, "description": ""})


def test_gary_flow_ready_processing_completed(make_gateway, sink: CallbackSink, http: httpx.Client,
                                              rdb: redis_sync.Redis) -> None:
    gw = make_gateway(gary_url=sink.url)
    r = http.post(f"{gw.url}/tasks", json={"session_id": "s1", "task_type": "process_audio", "data": GARY_DATA})
    assert r.status_code == 200
    body = r.json()
    # both shapes gary accepts: flat fields and queue_status
    assert body["status"] == "processing" and body["queue_status"]["active_tasks"] == 1
    assert {"estimated_wait_seconds", "active_tasks", "queued_tasks"} <= set(body)
    assert body["vram_mb"] == 2000 and body["model"] == "facebook/musicgen-small"
    sink.wait_for(lambda: "ready" in sink.statuses("s1"))
    ready = next(n for n in sink.received if n.body["status"] == "ready")
    assert ready.body["type"] == "process_audio" and ready.body["session_id"] == "s1"
    assert set(ready.body["queue_status"]) >= {"estimated_wait_seconds", "active_tasks", "queued_tasks"}
    assert ready.body["lease_id"] == "generation:s1" and ready.body["fencing_token"] == body["fencing_token"]
    assert ready.notification_id == ready.body["notification_id"]

    # the Lua scripts and garycommon.rediskeys spell the keys alike
    assert rdb.hget(rediskeys.gq_task("generation", "s1"), "state") == "granted"
    assert rdb.sismember(rediskeys.gq_active("generation"), "s1")
    assert rdb.zscore(rediskeys.gq_expiry(), "generation:s1") is not None
    assert rdb.hget(rediskeys.gq_gpu_used(), "gpu0") == "2000"

    assert http.post(f"{gw.url}/task/status", json={"session_id": "s1", "status": "processing"}).status_code == 200
    assert http.get(f"{gw.url}/tasks/s1").json()["status"] == "processing"
    hb = http.post(f"{gw.url}/tasks/s1/heartbeat", json={"fencing_token": body["fencing_token"]})
    assert hb.status_code == 200 and hb.json()["expires_at"] > body["expires_at"]
    done = http.post(f"{gw.url}/task/status", json={"session_id": "s1", "status": "completed"})
    assert done.status_code == 200 and done.json()["status"] == "completed"
    assert http.get(f"{gw.url}/tasks/s1").json()["status"] == "completed"
    assert rdb.hget(rediskeys.gq_gpu_used(), "gpu0") == "0"
    assert rdb.ttl(rediskeys.gq_task("generation", "s1")) > 0  # finished records expire
    assert float(rdb.hget(rediskeys.gq_durations(), "m:facebook/musicgen-small")) >= 0
    # repeating a final status is harmless
    assert http.post(f"{gw.url}/task/status", json={"session_id": "s1", "status": "completed"}).status_code == 200


def test_enqueue_is_idempotent_and_positions_are_announced(make_gateway, sink: CallbackSink,
                                                           http: httpx.Client) -> None:
    gw = make_gateway(gary_url=sink.url, queue_gpus="gpu0=9000")
    big = json.dumps({"model_name": "facebook/musicgen-large"})
    for sid in ("a", "b", "c"):
        assert http.post(f"{gw.url}/tasks", json={"session_id": sid, "task_type": "process_audio",
                                                   "data": big}).status_code == 200
    again = http.post(f"{gw.url}/tasks", json={"session_id": "c", "task_type": "process_audio", "data": big}).json()
    assert again["status"] == "queued" and again["position"] == 2 and again["queued_tasks"] == 2
    assert http.get(f"{gw.url}/queue").json()["lanes"]["generation"]["queued"] == 2
    sink.wait_for(lambda: sink.statuses("c") == ["queued"])
    queued = next(n for n in sink.received if n.body["session_id"] == "c")
    assert queued.body["queue_status"]["queued_tasks"] == 2  # gary shows it as "you are number 2"
    assert queued.body["queue_status"]["estimated_wait_seconds"] > 0
    http.post(f"{gw.url}/task/status", json={"session_id": "a", "status": "completed"})
    sink.wait_for(lambda: sink.statuses("c") == ["queued", "queued"])  # moved to position 1
    assert [n.body["queue_status"]["position"] for n in sink.received if n.body["session_id"] == "c"] == [2, 1]
    sink.wait_for(lambda: sink.statuses("b") == ["queued", "ready"])
    # a finished task may be queued again under the same session id (a new run)
    http.post(f"{gw.url}/task/status", json={"session_id": "b", "status": "failed", "error": "boom"})
    http.post(f"{gw.url}/task/status", json={"session_id": "c", "status": "completed"})
    rerun = http.post(f"{gw.url}/tasks", json={"session_id": "a", "task_type": "retry_music", "data": big}).json()
    assert rerun["status"] == "processing" and rerun["type"] == "retry_music"


def test_transform_lane_runs_one_at_a_time_beside_generation(make_gateway, http: httpx.Client) -> None:
    gw = make_gateway(queue_gpus="gpu0=80000")
    data = {"variation": "accordion_folk", "session_id": "t1", "flowstep": 0.12}
    t1 = http.post(f"{gw.url}/transform/tasks", json={"session_id": "t1", "task_type": "transform", "data": data})
    t2 = http.post(f"{gw.url}/transform/tasks", json={"session_id": "t2", "task_type": "transform", "data": data})
    g1 = http.post(f"{gw.url}/tasks", json={"session_id": "t1", "task_type": "process_audio", "data": GARY_DATA})
    assert t1.json()["status"] == "processing" and t1.json()["vram_mb"] == 9000  # melodyflow by default
    assert t2.json()["status"] == "queued"  # lane cap 1, although 80 GB are free
    assert g1.json()["status"] == "processing"  # same session, other lane: independent
    assert http.get(f"{gw.url}/transform/tasks/t2").json()["status"] == "queued"
    http.post(f"{gw.url}/transform/task/status", json={"session_id": "t1", "status": "completed"})
    wait_until(lambda: http.get(f"{gw.url}/transform/tasks/t2").json()["status"] == "processing")


def test_lane_pull_style(make_gateway, http: httpx.Client) -> None:
    """Pull-style callers (an outside service on a lane the operator adds): `{session_id}` only, poll until
    processing, release with completed; a lease TTL long enough for callers that never heartbeat."""
    gw = make_gateway(queue_gpus="gpu0=80000", queue_lanes=["generation", "transform", "sa3"], queue_lane_caps="sa3=1",
                      queue_lane_lease_ttl="sa3=900")
    first = http.post(f"{gw.url}/sa3/tasks", json={"session_id": "p1"}).json()
    second = http.post(f"{gw.url}/sa3/tasks", json={"session_id": "p2"}).json()
    assert (first["status"], first["position"]) == ("processing", 0)
    assert (second["status"], second["position"]) == ("queued", 1)
    http.post(f"{gw.url}/sa3/task/status", json={"session_id": "p1", "status": "completed"})
    wait_until(lambda: http.get(f"{gw.url}/sa3/tasks/p2").json()["status"] == "processing")
    # cancel withdraws a queued task; a poller that stops polling is dropped after the poll TTL
    http.post(f"{gw.url}/sa3/tasks", json={"session_id": "p3"})
    assert http.delete(f"{gw.url}/sa3/tasks/p3").json()["status"] == "cancelled"
    http.post(f"{gw.url}/sa3/tasks", json={"session_id": "p4"})
    wait_until(lambda: http.get(f"{gw.url}/queue").json()["lanes"]["sa3"]["queued"] == 0, 5)
    gone = http.get(f"{gw.url}/sa3/tasks/p4").json()
    assert gone["status"] == "cancelled" and "nobody polled" in gone["error"]


def test_lease_api_and_fencing(make_gateway, http: httpx.Client, rdb: redis_sync.Redis) -> None:
    gw = make_gateway(queue_gpus="gpu0=10000")
    a = http.post(f"{gw.url}/leases", json={"model": "facebook/melodyflow-t24-30secs", "lane": "transform",
                                            "owner": "terry:x", "vram_mb": 6000}).json()
    assert a["status"] == "granted" and a["gpu"] == "gpu0" and a["fencing_token"] >= 1
    b = http.post(f"{gw.url}/leases", json={"model": "facebook/musicgen-medium", "lane": "generation",
                                            "owner": "w2"}).json()
    assert b["status"] == "queued" and b["vram_mb"] == 5000
    # a long-poll wakes up when the lease is granted by the release
    http.post(f"{gw.url}/leases/{a['lease_id']}/release", json={"fencing_token": a["fencing_token"],
                                                                "peak_vram_mb": 7000})
    polled = http.get(f"{gw.url}/leases/{b['lease_id']}", params={"wait": 5}).json()
    assert polled["status"] == "granted"
    # the learned peak sizes the next lease of that model (+10%)
    assert rdb.hget(rediskeys.gq_vram_learned(), "facebook/melodyflow-t24-30secs") == "7000"
    c = http.post(f"{gw.url}/leases", json={"model": "facebook/melodyflow-t24-30secs", "lane": "transform",
                                            "owner": "terry:y"}).json()
    assert c["vram_mb"] == 7700
    http.post(f"{gw.url}/leases/{c['lease_id']}/release", json={"outcome": "cancelled"})
    # stale fencing tokens are refused
    stale = http.post(f"{gw.url}/leases/{b['lease_id']}/heartbeat", json={"fencing_token": polled["fencing_token"] + 99})
    assert stale.status_code == 409 and "stale fencing token" in stale.json()["error"]
    ok = http.post(f"{gw.url}/leases/{b['lease_id']}/heartbeat", json={"fencing_token": polled["fencing_token"]})
    assert ok.status_code == 200
    rel = http.post(f"{gw.url}/leases/{b['lease_id']}/release", json={"fencing_token": polled["fencing_token"]})
    assert rel.json()["status"] == "completed"
    assert http.post(f"{gw.url}/leases/generation:nope/heartbeat", json={}).status_code == 404


def test_multi_gpu_first_fit_and_gpu_constraints(make_gateway, http: httpx.Client) -> None:
    gw = make_gateway(queue_gpus="hostA/0=10000,hostA/1=10000,hostB/0=24000")

    def lease(mb: int, **extra: object) -> dict:
        return http.post(f"{gw.url}/leases", json={"model": "m", "lane": "generation", "owner": "t", "vram_mb": mb,
                                                   **extra}).json()

    assert lease(6000)["gpu"] == "hostA/0"
    assert lease(6000)["gpu"] == "hostA/1"
    assert lease(3000)["gpu"] == "hostA/0"  # first GPU where it fits
    assert lease(4000, gpus=["hostB/0"])["gpu"] == "hostB/0"
    assert lease(20000)["gpu"] == "hostB/0"
    too_big = http.post(f"{gw.url}/leases", json={"model": "m", "lane": "generation", "owner": "t",
                                                  "vram_mb": 30000})
    assert too_big.status_code == 422 and "largest GPU" in too_big.json()["error"]
    # a host registers a new GPU: queued work lands there
    queued = lease(9000)
    assert queued["status"] == "queued"
    assert http.post(f"{gw.url}/gpus", json={"gpu_id": "hostC/0", "capacity_mb": 16000}).status_code == 200
    wait_until(lambda: http.get(f"{gw.url}/leases/{queued['lease_id']}").json().get("gpu") == "hostC/0")
    snap = http.get(f"{gw.url}/queue").json()
    assert [g["id"] for g in snap["gpus"]] == ["hostA/0", "hostA/1", "hostB/0", "hostC/0"]
    assert all(g["granted_mb"] <= g["capacity_mb"] for g in snap["gpus"])


def test_placeholder_gpu_is_replaced_by_registered_ones(make_gateway, http: httpx.Client) -> None:
    gw = make_gateway(queue_gpus="", gpu_vram_mb=None, queue_fallback_capacity_mb=12000, queue_reserve_mb=0)
    gpus = http.get(f"{gw.url}/queue").json()["gpus"]
    if gpus and gpus[0]["id"] != "default":
        return  # this machine has a real GPU, detected instead of the placeholder
    assert gpus == [{"id": "default", "capacity_mb": 12000, "granted_mb": 0, "free_mb": 12000}]
    http.post(f"{gw.url}/gpus", json={"gpu_id": "cuda:0", "capacity_mb": 40000})
    assert [g["id"] for g in http.get(f"{gw.url}/queue").json()["gpus"]] == ["cuda:0"]


def test_api_keys_limits_and_backpressure(make_gateway, http: httpx.Client) -> None:
    gw = make_gateway(api_keys="alice-key,bob-key", queue_gpus="gpu0=80000", queue_key_max_active=1,
                      queue_key_max_queued=2, queue_max_queued=3)
    body = {"session_id": "x", "task_type": "process_audio", "data": GARY_DATA}
    assert http.post(f"{gw.url}/tasks", json=body).status_code == 401
    assert http.post(f"{gw.url}/tasks", json=body, headers={"X-API-Key": "wrong"}).status_code == 401
    assert http.get(f"{gw.url}/queue").status_code == 401
    assert http.get(f"{gw.url}/health").status_code == 200  # health stays open for probes
    alice = {"X-API-Key": "alice-key"}
    bob = {"Authorization": "Bearer bob-key"}
    r = [http.post(f"{gw.url}/tasks", json={**body, "session_id": f"a{i}"}, headers=alice) for i in range(4)]
    assert [x.status_code for x in r[:3]] == [200, 200, 200]
    assert [x.json()["status"] for x in r[:3]] == ["processing", "queued", "queued"]  # 1 active per key
    assert r[3].status_code == 429 and int(r[3].headers["Retry-After"]) >= 1
    assert "server busy" in r[3].json()["error"] and r[3].json()["code"] == "QUEUE_FULL"
    # bob is not held back by alice's backlog (per-key concurrency), and still fits in the lane cap of 3 queued
    b0 = http.post(f"{gw.url}/tasks", json={**body, "session_id": "b0"}, headers=bob).json()
    assert b0["status"] == "processing"
    b1 = http.post(f"{gw.url}/tasks", json={**body, "session_id": "b1"}, headers=bob)
    assert b1.json()["status"] == "queued"
    b2 = http.post(f"{gw.url}/tasks", json={**body, "session_id": "b2"}, headers=bob)
    assert b2.status_code == 429 and "queue is full" in b2.json()["error"]  # 3 waiting in the lane


def test_health_metrics_and_snapshot(make_gateway, sink: CallbackSink, http: httpx.Client) -> None:
    gw = make_gateway(gary_url=sink.url, queue_gpus="gpu0=10000")
    health = http.get(f"{gw.url}/health").json()
    assert health["status"] == "ok" and health["redis"] == "ok"
    http.post(f"{gw.url}/tasks", json={"session_id": "m1", "task_type": "process_audio", "data": GARY_DATA})
    http.post(f"{gw.url}/transform/tasks", json={"session_id": "m2", "task_type": "transform"})
    http.post(f"{gw.url}/task/status", json={"session_id": "m1", "status": "completed"})
    text = http.get(f"{gw.url}/metrics").text
    assert 'gq_queue_depth{lane="generation"} 0' in text
    assert 'gq_leases_held{lane="transform"} 1' in text
    assert 'gq_vram_capacity_mb{gpu="gpu0"} 10000' in text
    assert 'gq_vram_granted_mb{gpu="gpu0"} 9000' in text
    assert 'gq_vram_free_mb{gpu="gpu0"} 1000' in text
    assert 'gq_wait_seconds_count{lane="generation"} 1' in text
    assert 'gq_run_seconds_bucket{lane="generation",le="+Inf"} 1' in text
    assert 'gq_tasks_finished_total{lane="generation",state="completed"} 1' in text
    snap = http.get(f"{gw.url}/queue").json()
    assert snap["gpus"][0]["granted_mb"] == 9000
    assert snap["leases"][0]["session_id"] == "m2" and snap["leases"][0]["model"] == "facebook/melodyflow-t24-30secs"
    assert snap["lanes"]["transform"]["cap"] == 1
