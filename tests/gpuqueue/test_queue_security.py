"""Issue 13 at the gateway, with keys on (API_KEYS, SERVICE_KEY, ADMIN_KEY): the services' credential is never a user
key (their resident leases can't fill one; the end client they forward is counted instead), only the operator
changes GPUs, callbacks go only to configured gary URLs and are signed with the service key."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from garycommon.keys import SIGNATURE_HEADER, key_identity, signature_problem
from garycommon.settings import Settings
from gpuqueue.app import create_app
from tests.gpuqueue.gq_helpers import serve, wait_until
from tests.servers import ThreadedServer, free_port

SERVICE = "service-secret-for-tests"
ADMIN = "operator-secret-for-tests"
SVC = {"X-API-Key": SERVICE}


def _lease(http: httpx.Client, url: str, headers: dict[str, str], **fields: Any) -> httpx.Response:
    body = {"model": "m", "lane": "generation", "owner": "t", "vram_mb": 1000, **fields}
    return http.post(f"{url}/leases", json=body, headers=headers)


def test_service_leases_never_fill_a_user_key_and_friends_are_told_apart(make_gateway, http: httpx.Client) -> None:
    gw = make_gateway(api_keys="k1,k2", service_key=SERVICE, queue_key_max_active=2, queue_gpus="gpu0=80000",
                      queue_lane_caps="generation=8")
    # gary's and jerry's resident leases (the ones that jammed the first user key)
    for lane, owner in (("gary", "gary:resident:m"), ("jerry", "jerry")):
        r = _lease(http, gw.url, SVC, lane=lane, owner=owner, resident=True)
        assert r.status_code == 200 and r.json()["status"] == "granted", r.text
    # friend 1's requests forwarded by gary with friend 1's identity: friend 1's own cap (2) applies
    one, two = key_identity("k1"), key_identity("k2")
    a = [_lease(http, gw.url, SVC, client_key=one).json()["status"] for _ in range(3)]
    assert a == ["granted", "granted", "queued"]
    # friend 2 is another key: not blocked by friend 1, nor by the services' residents
    assert _lease(http, gw.url, SVC, client_key=two).json()["status"] == "granted"
    # friend 1 calling the gateway directly counts as the same key it is forwarded as
    assert _lease(http, gw.url, {"X-API-Key": "k1"}).json()["status"] == "queued"
    assert _lease(http, gw.url, {"X-API-Key": "k2"}).json()["status"] == "granted"
    # the services' own work (no client forwarded: warm-up) counts against no key
    assert _lease(http, gw.url, SVC, owner="gary-warmup").json()["status"] == "granted"


def test_resident_leases_are_the_services_own(make_gateway, http: httpx.Client) -> None:
    gw = make_gateway(api_keys="k1", service_key=SERVICE, queue_gpus="gpu0=80000")
    r = _lease(http, gw.url, {"X-API-Key": "k1"}, lane="gary", resident=True)
    assert r.status_code == 403 and "SERVICE_KEY" in r.json()["error"]
    assert _lease(http, gw.url, {"X-API-Key": "wrong"}).status_code == 401
    assert _lease(http, gw.url, {}).status_code == 401


def _capacity(http: httpx.Client, url: str) -> dict[str, int]:
    return {g["id"]: g["capacity_mb"] for g in http.get(f"{url}/queue", headers={"X-API-Key": "k1"}).json()["gpus"]}


def test_admin_routes_need_the_admin_key(make_gateway, http: httpx.Client) -> None:
    gw = make_gateway(api_keys="k1", service_key=SERVICE, admin_key=ADMIN, queue_gpus="default=24000")
    before = _capacity(http, gw.url)
    for headers in ({"X-API-Key": "k1"}, {"Authorization": "Bearer k1"}, SVC, {}):
        r = http.delete(f"{gw.url}/gpus/default", headers=headers)
        assert r.status_code == 401 and "ADMIN_KEY" in r.json()["error"], r.text
        r = http.post(f"{gw.url}/gpus", json={"gpu_id": "fake", "capacity_mb": 999_999}, headers=headers)
        assert r.status_code == 401, r.text
    assert _capacity(http, gw.url) == before  # nothing drained, no fake GPU
    r = http.post(f"{gw.url}/gpus", json={"gpu_id": "real", "capacity_mb": 16000}, headers={"X-API-Key": ADMIN})
    assert r.status_code == 200
    assert http.delete(f"{gw.url}/gpus/real", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200


def _lan_address() -> str | None:
    """This machine's own non-loopback address (a UDP connect sends nothing), or None on a loopback-only box."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def test_admin_routes_answer_only_loopback_without_admin_key(redis_url: str, http: httpx.Client) -> None:
    addr = _lan_address()
    if addr is None:
        pytest.skip("no non-loopback address on this machine")
    app = create_app(Settings(redis_url=redis_url, gary_url="", queue_gpus="default=24000", api_keys=["k1"]))
    server = ThreadedServer(app, start_within=20, stop_within=10)
    server.server.config.host = "0.0.0.0"  # reachable on the LAN address too, as compose publishes it
    server.start()
    try:
        lan = f"http://{addr}:{server.port}"
        r = http.post(f"{lan}/gpus", json={"gpu_id": "fake", "capacity_mb": 999_999}, headers={"X-API-Key": "k1"})
        assert r.status_code == 403 and "loopback" in r.json()["error"], r.text
        assert http.delete(f"{lan}/gpus/default", headers={"X-API-Key": "k1"}).status_code == 403
        # the operator on the machine itself still can
        r = http.post(f"{server.url}/gpus", json={"gpu_id": "hostA/0", "capacity_mb": 16000})
        assert r.status_code == 200, r.text
    finally:
        server.stop()


def test_callback_url_must_be_a_configured_gary_exactly(make_gateway, http: httpx.Client) -> None:
    gary = f"http://127.0.0.1:{free_port()}"
    jerry_port = free_port()
    gw = make_gateway(gary_url=gary, queue_gpus="gpu0=80000", queue_lane_caps="generation=1")
    refused = [
        f"http://127.0.0.1:{jerry_port}",  # another service's port on a trusted host (jerry's /cleanup)
        f"http://127.0.0.1:{jerry_port}/any/internal/path?x=",  # ... with the path and query
        f"{gary}/any/internal/path",  # gary's host and port, another route
        f"{gary}?x=/task_notification",
        f"http://localhost:{gary.rsplit(':', 1)[1]}/x",
        f"http://user:pw@127.0.0.1:{gary.rsplit(':', 1)[1]}",
        "https://" + gary.split("://")[1],  # another scheme
    ]
    for i, url in enumerate(refused):
        r = http.post(f"{gw.url}/tasks", json={"session_id": f"s{i}", "callback_url": url, "vram_mb": 100})
        assert r.status_code == 403 and "callback_url is not allowed" in r.json()["error"], (url, r.text)
    r = http.post(f"{gw.url}/tasks", json={"session_id": "ok", "callback_url": gary + "/", "vram_mb": 100})
    assert r.status_code == 200, r.text
    # a worker host's gary: a bare host means GARY_URL's scheme, port and path on that host
    settings = Settings(gary_url="http://gary:8000", queue_callback_hosts="gary,10.0.0.2,http://box:9000/g")
    assert settings.callback_bases == {"http://gary:8000", "http://10.0.0.2:8000", "http://box:9000/g"}


class RawSink:
    """A `/task_notification` receiver that keeps the raw bytes and headers (what a signature covers)."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, dict[str, str]]] = []
        app = FastAPI()

        @app.post("/task_notification")
        async def note(request: Request) -> JSONResponse:
            self.received.append((await request.body(), dict(request.headers)))
            return JSONResponse({"status": "received"})

        self.server = serve(app)
        self.url = self.server.url


def test_callbacks_are_signed_with_the_service_key(make_gateway, http: httpx.Client) -> None:
    sink = RawSink()
    try:
        gw = make_gateway(gary_url=sink.url, service_key=SERVICE, queue_lease_ttl_seconds=30)
        r = http.post(f"{gw.url}/tasks", json={"session_id": "signed", "task_type": "t", "vram_mb": 100},
                      headers=SVC)
        assert r.status_code == 200, r.text
        wait_until(lambda: len(sink.received) >= 1, 5, "a callback")
        body, headers = sink.received[0]
        nid = headers["x-notification-id"]
        assert json.loads(body)["status"] == "ready"
        assert signature_problem(SERVICE, nid, body, headers[SIGNATURE_HEADER.lower()]) is None
        assert signature_problem("another-key", nid, body, headers[SIGNATURE_HEADER.lower()]) is not None
        forged = body.replace(b'"ready"', b'"failed"')
        assert signature_problem(SERVICE, nid, forged, headers[SIGNATURE_HEADER.lower()]) == "bad notification signature"
        stale = f"t={int(time.time()) - 3600},v1=00"
        assert signature_problem(SERVICE, nid, body, stale) == "stale notification signature"
    finally:
        sink.server.stop()
