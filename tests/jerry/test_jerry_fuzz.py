"""jerry under schema-driven and junk requests from its own OpenAPI (bounded; FUZZ_SCALE for more): no 5xx, no
hang, still healthy, and a well-formed generation on another connection served throughout."""

from __future__ import annotations

import httpx

from tests.fuzzing import ValidClient, fuzz_http


def test_jerry_fuzz(jerry) -> None:  # noqa: ANN001
    spec = httpx.get(f"{jerry.url}/openapi.json").json()

    def valid(http: httpx.Client) -> bool:
        r = http.post("/generate", json={"prompt": "valid client", "steps": 2, "seconds_total": 1,
                                         "return_format": "base64"})
        return r.status_code == 200 and r.json()["success"] is True

    def skip(method: str, path: str) -> bool:  # model switching/caches (slow) and hub look-ups (network): elsewhere
        return path in ("/models/switch", "/models/clear-cache", "/cleanup", "/models/checkpoints", "/models/prompts")

    with ValidClient(valid, jerry.url, interval=1.0) as client:
        prober = fuzz_http(jerry.url, spec, examples=300, skip=skip)
    assert prober.defects == [], prober.defects[:10]
    assert client.failed == 0 and client.ok > 0
    assert httpx.get(f"{jerry.url}/health", timeout=30).status_code == 200
