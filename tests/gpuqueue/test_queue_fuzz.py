"""The gateway under schema-driven and junk requests from its own OpenAPI (bounded: FUZZ_EXAMPLES): no 5xx, no hang,
still healthy, and a well-formed client on another connection served throughout."""

from __future__ import annotations

import httpx

from tests.fuzzing import ValidClient, fuzz_http


def test_gateway_fuzz(make_gateway) -> None:  # noqa: ANN001
    url = make_gateway(queue_gpus="gpu0=24000,hostB/0=8000").url
    spec = httpx.get(f"{url}/openapi.json").json()

    def valid(http: httpx.Client) -> bool:
        return http.get("/queue").status_code == 200 and http.post(
            "/leases", json={"model": "m", "lane": "generation", "owner": "valid", "vram_mb": 10}).status_code == 200

    with ValidClient(valid, url) as client:
        prober = fuzz_http(url, spec, examples=800)
    assert prober.defects == [], prober.defects[:10]
    assert client.failed == 0 and client.ok > 0
    assert httpx.get(f"{url}/health").status_code == 200
