"""The console's routes without a browser: only the shipped files are served (no path reaches the disk), the queue
snapshot leaves no session id or client key readable, and the offline /docs helper serves Swagger UI from the
package."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from gary.console import router as console_router
from gary.console.router import anonymise, anonymised_snapshot
from garycommon.docs_assets import install_offline_docs


def test_page_and_files_are_served_from_the_package() -> None:
    app = FastAPI()
    app.include_router(console_router)
    with TestClient(app) as http:
        page = http.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'src="/console/console.js"' in page.text and "http://" not in page.text and "https://" not in page.text
        js = http.get("/console/console.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        assert 'from "./vendor/socket.io.esm.min.js"' in js.text
        vendor = http.get("/console/vendor/socket.io.esm.min.js")
        assert vendor.status_code == 200 and "Socket.IO v4.8.1" in vendor.text
        assert "sourceMappingURL" not in vendor.text  # no request for a map that is not shipped
        for bad in ("/console/../router.py", "/console/%2e%2e/router.py", "/console/router.py", "/console/",
                    "/console/static/index.html", "/console//etc/passwd"):
            r = http.get(bad)
            assert r.status_code == 404, (bad, r.status_code)


def test_queue_snapshot_is_anonymised_and_marks_the_callers_own_tasks() -> None:
    mine, other = "4f1c2d3e-aaaa-bbbb-cccc-000000000001", "4f1c2d3e-aaaa-bbbb-cccc-000000000002"
    snapshot = {
        "gpus": [{"id": "default", "capacity_mb": 24000, "granted_mb": 9000, "free_mb": 15000}],
        "lanes": {"generation": {"queued": 1, "active": 1, "next": [other]}},
        "leases": [{"lane": "generation", "session_id": mine, "client": "203.0.113.9-key", "model": "m", "vram_mb": 1000},
                   {"lane": "generation", "session_id": other, "client": None, "model": "m", "vram_mb": 1000}],
    }
    out = anonymised_snapshot(snapshot, mine)
    text = repr(out)
    assert mine not in text and other not in text and "203.0.113.9" not in text
    assert [lease["mine"] for lease in out["leases"]] == [True, False]
    assert out["leases"][0]["session_id"] == anonymise(mine) and len(anonymise(mine)) == 8
    assert out["leases"][1]["client"] is None
    assert out["lanes"]["generation"]["next"] == [anonymise(other)]
    assert out["lanes"]["generation"]["mine_waiting"] is False
    assert anonymised_snapshot(snapshot, other)["lanes"]["generation"]["mine_waiting"] is True
    assert out["gpus"] == snapshot["gpus"]


def test_offline_docs_replace_the_cdn_pages() -> None:
    app = FastAPI(title="svc")

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"ok": "yes"}

    install_offline_docs(app)
    with TestClient(app) as http:
        docs = http.get("/docs")
        assert docs.status_code == 200
        assert "/docs-assets/swagger-ui-bundle.js" in docs.text and "/docs-assets/swagger-ui.css" in docs.text
        assert "cdn" not in docs.text.lower() and "https://" not in docs.text
        bundle = http.get("/docs-assets/swagger-ui-bundle.js")
        assert bundle.status_code == 200 and len(bundle.content) > 500_000
        assert http.get("/docs-assets/swagger-ui.css").headers["content-type"].startswith("text/css")
        assert http.get("/docs-assets/..%2Fdocs_assets.py").status_code == 404
        assert http.get("/docs-assets/nope.js").status_code == 404
        assert http.get("/redoc").status_code == 404
        assert http.get("/docs/oauth2-redirect").status_code == 200
        assert "/ping" in http.get("/openapi.json").json()["paths"]
        assert [r.path for r in app.routes].count("/docs") == 1
