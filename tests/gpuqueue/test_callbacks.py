"""Callback delivery: retried with backoff while the target is down, failing or slow; deduplicated by
X-Notification-ID; never two `ready`s for one grant; never a stale `queued` after `ready`."""

from __future__ import annotations

import time

import httpx
import redis as redis_sync

from garycommon import rediskeys
from tests.gpuqueue.gq_helpers import CallbackSink, wait_until
from tests.servers import free_port

DATA = {"model_name": "facebook/musicgen-small"}


def _enqueue(http: httpx.Client, url: str, sid: str, mb: int = 2000) -> dict:
    r = http.post(f"{url}/tasks", json={"session_id": sid, "task_type": "process_audio", "data": DATA, "vram_mb": mb})
    assert r.status_code == 200, r.text
    return r.json()


def test_target_down_then_up_gets_each_notification_once(make_gateway, http: httpx.Client,
                                                         rdb: redis_sync.Redis) -> None:
    sink = CallbackSink(port=free_port())  # nothing listens there yet: connection refused
    gw = make_gateway(queue_lease_ttl_seconds=30, gary_url=sink.url)
    _enqueue(http, gw.url, "d1")
    wait_until(lambda: int(rdb.hget(rediskeys.gq_counters(), "notify:retried") or 0) >= 3, 5, "retries")
    sink.start()
    try:
        wait_until(lambda: sink.statuses("d1") == ["ready"], 10)
        wait_until(lambda: rdb.zcard(rediskeys.gq_outbox()) == 0, 5, "outbox drained")
        time.sleep(0.3)
        assert [n.body["status"] for n in sink.received] == ["ready"]  # delivered once, nothing else
    finally:
        sink.stop()


def test_failing_target_is_retried_with_growing_backoff(make_gateway, sink: CallbackSink, http: httpx.Client) -> None:
    sink.mode = "fail"
    gw = make_gateway(queue_lease_ttl_seconds=30, gary_url=sink.url, queue_callback_backoff_seconds=0.05)
    _enqueue(http, gw.url, "f1")
    wait_until(lambda: len(sink.received) >= 6, 10, "six attempts")
    sink.mode = "ok"
    attempts = list(sink.received)
    assert len({n.notification_id for n in attempts}) == 1  # the same notification every time
    gaps = [b.at - a.at for a, b in zip(attempts, attempts[1:], strict=False)][:5]
    # nominal 0.05, 0.1, 0.2, 0.4, 0.8 s (+-20% jitter, plus scheduling noise on a busy machine): each gap longer
    # than the one two before it, and the fifth over ten times the first
    assert all(later > earlier for earlier, later in zip(gaps, gaps[2:], strict=False)) and gaps[-1] > 10 * gaps[0], gaps
    wait_until(lambda: len(sink.received) > len(attempts), 5)
    assert sink.statuses("f1") == ["ready"]


def test_slow_target_retries_same_id_and_two_replicas_send_one_ready(make_gateway, sink: CallbackSink,
                                                                     http: httpx.Client,
                                                                     rdb: redis_sync.Redis) -> None:
    sink.mode, sink.delay = "slow", 1.0  # answers after the 0.5 s callback timeout: the gateway cannot tell it arrived
    replicas = [make_gateway(queue_lease_ttl_seconds=30, gary_url=sink.url, queue_callback_timeout_seconds=0.5) for _ in range(2)]
    for i in range(4):
        _enqueue(http, replicas[i % 2].url, f"r{i}")
    wait_until(lambda: len(sink.received) >= 8, 10, "repeated deliveries")
    sink.mode = "ok"
    wait_until(lambda: rdb.zcard(rediskeys.gq_outbox()) == 0, 10, "outbox drained")
    for i in range(4):
        copies = [n for n in sink.received if n.body["session_id"] == f"r{i}"]
        assert len(copies) >= 2  # retried...
        assert len({n.notification_id for n in copies}) == 1  # ...under one id, so the receiver drops the copies
        assert sink.statuses(f"r{i}") == ["ready"]


def test_superseded_queued_is_never_sent_after_ready(make_gateway, sink: CallbackSink, http: httpx.Client,
                                                     rdb: redis_sync.Redis) -> None:
    sink.mode = "fail"
    gw = make_gateway(queue_lease_ttl_seconds=30, gary_url=sink.url, queue_gpus="gpu0=2000", queue_callback_backoff_seconds=0.2)
    _enqueue(http, gw.url, "t1")
    assert _enqueue(http, gw.url, "t2")["status"] == "queued"
    wait_until(lambda: any(n.body["session_id"] == "t2" for n in sink.received), 5)  # `queued` is being retried
    http.post(f"{gw.url}/task/status", json={"session_id": "t1", "status": "completed"})
    wait_until(lambda: http.get(f"{gw.url}/tasks/t2").json()["state"] == "granted", 5)
    sink.received.clear()
    sink.mode = "ok"
    wait_until(lambda: rdb.zcard(rediskeys.gq_outbox()) == 0, 10, "outbox drained")
    assert sink.statuses("t2") == ["ready"]
    assert int(rdb.hget(rediskeys.gq_counters(), "notify:superseded") or 0) >= 1


def test_gives_up_after_the_attempt_budget_and_says_so(make_gateway, sink: CallbackSink, http: httpx.Client) -> None:
    sink.mode = "fail"
    gw = make_gateway(queue_lease_ttl_seconds=30, gary_url=sink.url, queue_callback_attempts=3)
    _enqueue(http, gw.url, "g1")
    wait_until(lambda: "notify_error" in http.get(f"{gw.url}/tasks/g1").json(), 5)
    assert len(sink.received) == 3
    assert "ready: HTTP 500" in http.get(f"{gw.url}/tasks/g1").json()["notify_error"]
    assert 'gq_notifications_total{result="failed"} 1' in http.get(f"{gw.url}/metrics").text


def test_each_task_of_a_session_gets_its_own_notification_ids(make_gateway, sink: CallbackSink, http: httpx.Client,
                                                                ) -> None:
    """A session's jobs reuse its task id (lane + session): the `ready` of its second and third task must not reuse
    the first one's notification id, or the receiver drops it as a duplicate and the job waits out a lease TTL."""
    gw = make_gateway(queue_lease_ttl_seconds=30, gary_url=sink.url)
    for n in range(3):
        r = http.post(f"{gw.url}/tasks", json={"session_id": "s3", "task_type": "continue_music", "data": DATA,
                                               "vram_mb": 100, "job_id": f"job-{n}"})
        assert r.status_code == 200, r.text
        wait_until(lambda n=n: sink.statuses("s3").count("ready") == n + 1, 10, f"ready #{n + 1}")
        ready = [x for x in sink.received if x.body["status"] == "ready"][-1]
        assert ready.body["job_id"] == f"job-{n}"  # the receiver can tell which of its jobs the grant is for
        r = http.post(f"{gw.url}/task/status", json={"session_id": "s3", "status": "completed",
                                                     "fencing_token": ready.body["fencing_token"]})
        assert r.status_code == 200, r.text
    ids = [x.notification_id for x in sink.received if x.body["status"] == "ready"]
    assert len(set(ids)) == 3, ids


def test_a_sessions_next_job_is_refused_while_its_previous_job_holds_the_task(make_gateway, sink: CallbackSink,
                                                                               http: httpx.Client) -> None:
    """One task id per session and lane: while job A holds it, queueing job B is a clear 409 (never job A's task
    handed back as if it were B's), re-sending A is idempotent, and B queues once A has finished."""
    gw = make_gateway(queue_lease_ttl_seconds=30, gary_url=sink.url)
    body = {"session_id": "s4", "task_type": "continue_music", "data": DATA, "vram_mb": 100}
    assert http.post(f"{gw.url}/tasks", json={**body, "job_id": "job-a"}).status_code == 200
    wait_until(lambda: sink.statuses("s4") == ["ready"], 10, "job A granted")
    again = http.post(f"{gw.url}/tasks", json={**body, "job_id": "job-a"})
    assert again.status_code == 200 and again.json()["job_id"] == "job-a"
    refused = http.post(f"{gw.url}/tasks", json={**body, "job_id": "job-b"})
    assert refused.status_code == 409 and refused.json()["code"] == "IN_PROGRESS", refused.text
    fence = [x for x in sink.received if x.body["status"] == "ready"][-1].body["fencing_token"]
    assert http.post(f"{gw.url}/task/status", json={"session_id": "s4", "status": "completed",
                                                    "fencing_token": fence}).status_code == 200
    queued = http.post(f"{gw.url}/tasks", json={**body, "job_id": "job-b"})
    assert queued.status_code == 200 and queued.json()["job_id"] == "job-b"
