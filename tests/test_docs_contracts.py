"""The repository documents its own contracts (issue 17): nothing points at an outside spec, and every Socket.IO
event, gary4juce route and Redis key family in the code is in docs/. The lists come from the code, never by hand."""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
from pathlib import Path

from garycommon import rediskeys

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SECTION_SIGN = "\u00a7"  # the outside spec's section marker
# Third-party files shipped as they are (the Swagger UI bundle served offline at /docs).
VENDORED = ("garycommon/docs_static/",)
SKIP_DIRS = {".git", ".venv", "node_modules", "build", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
             "data", "gary_backend.egg-info"}


def _tracked_files() -> list[str]:
    """`git ls-files` where there is a repository; a copy without `.git` is walked instead."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
        return [p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.SubprocessError):
        files = []
        for folder, dirs, names in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
            files += [str((Path(folder) / n).relative_to(ROOT)) for n in names]
        return files


def _text(path: Path) -> str | None:
    try:
        raw = path.read_bytes()
    except OSError:
        return None  # listed by git but deleted in the work tree
    if b"\0" in raw:
        return None  # binary (images, archives)
    return raw.decode("utf-8", "replace")


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _literal(args: list[ast.expr], index: int) -> str | None:
    if len(args) > index and isinstance(args[index], ast.Constant) and isinstance(args[index].value, str):
        return args[index].value
    return None


def _parse(rel: str) -> ast.Module:
    return ast.parse((ROOT / rel).read_text(), filename=rel)


def handled_events() -> set[str]:
    """Events `gary/events.py` registers: `@on("name")` handlers and `@sio.event` functions (connect, disconnect)."""
    events = set()
    for node in ast.walk(_parse("gary/events.py")):
        if not isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef):
            continue
        for deco in node.decorator_list:
            if isinstance(deco, ast.Call) and _name(deco.func) == "on" and _literal(deco.args, 0):
                events.add(_literal(deco.args, 0))
            elif isinstance(deco, ast.Attribute) and deco.attr == "event":
                events.add(node.name)
    for call in _calls(_parse("gary/events.py")):
        if _name(call.func) == "on" and isinstance(call.func, ast.Attribute) and _literal(call.args, 0):
            events.add(_literal(call.args, 0))  # sio.on("name", handler)
    return events


def emitted_events() -> set[str]:
    """Events gary (and terry, into gary's rooms) send: literal `emit`/`to_session` names, the acks passed to
    `accepted`, and the result events of `gary/jobs.py`."""
    events: set[str] = set()
    files = [p for p in (ROOT / "gary").glob("*.py")] + [ROOT / "terry" / "progress.py"]
    for path in files:
        for call in _calls(ast.parse(path.read_text(), filename=str(path))):
            name = _name(call.func)
            if name in ("emit", "to_session") and _literal(call.args, 0):
                events.add(_literal(call.args, 0))
            elif name == "accepted" and _literal(call.args, 1):
                events.add(_literal(call.args, 1))
    for node in ast.walk(_parse("gary/jobs.py")):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "RESULT_EVENTS":
            assert isinstance(node.value, ast.Dict)
            events |= {v.value for v in node.value.values if isinstance(v, ast.Constant)}
    return events


def juce_routes() -> set[str]:
    """`METHOD /path` of every route in `gary/routes_juce.py`, with the router's prefix."""
    tree = _parse("gary/routes_juce.py")
    prefix = ""
    for call in _calls(tree):
        if _name(call.func) == "APIRouter":
            prefix = next(k.value.value for k in call.keywords if k.arg == "prefix" and isinstance(k.value, ast.Constant))
    routes = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef):
            for deco in node.decorator_list:
                if (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute)
                        and isinstance(deco.func.value, ast.Name) and deco.func.value.id == "router"
                        and _literal(deco.args, 0) is not None):
                    routes.add(f"{deco.func.attr.upper()} {prefix}{_literal(deco.args, 0)}")
    return routes


def key_families() -> dict[str, str]:
    """function name -> key pattern (each parameter shown as `{name}`) for every key builder in rediskeys."""
    families = {}
    for name, fn in vars(rediskeys).items():
        if name.startswith("_") or not inspect.isfunction(fn) or fn.__module__ != rediskeys.__name__:
            continue
        params = inspect.signature(fn).parameters
        families[name] = fn(*(f"{{{p}}}" for p in params))
    return families


def test_no_outside_spec_references() -> None:
    offenders = []
    for rel in _tracked_files():
        if rel.startswith(VENDORED):
            continue
        text = _text(ROOT / rel)
        if text is None or SECTION_SIGN not in text:
            continue
        offenders += [f"{rel}:{n}" for n, line in enumerate(text.splitlines(), 1) if SECTION_SIGN in line]
    assert not offenders, f"point these at docs/ instead of an outside spec's sections: {offenders}"


def test_every_handled_socketio_event_is_documented() -> None:
    events = handled_events()
    assert {"process_audio_request", "audio_chunk", "verify_session", "connect"} <= events  # the parser still works
    doc = (DOCS / "gary-socketio.md").read_text()
    missing = sorted(e for e in events if f"`{e}`" not in doc)
    assert not missing, f"handled in gary/events.py but not in docs/gary-socketio.md: {missing}"


def test_every_emitted_socketio_event_is_documented() -> None:
    events = emitted_events()
    assert {"audio_processed", "queue_status", "partial_audio", "process_audio_received", "transform_undone"} <= events
    doc = (DOCS / "gary-socketio.md").read_text()
    missing = sorted(e for e in events if f"`{e}`" not in doc)
    assert not missing, f"emitted by gary but not in docs/gary-socketio.md: {missing}"


def test_every_juce_route_is_documented() -> None:
    routes = juce_routes()
    assert "GET /api/juce/poll_status/{session_id}" in routes and len(routes) >= 7
    doc = (DOCS / "gary-juce.md").read_text()
    missing = sorted(r for r in routes if f"`{r}`" not in doc)
    assert not missing, f"routes of gary/routes_juce.py missing from docs/gary-juce.md: {missing}"


def test_every_redis_key_family_is_documented() -> None:
    families = key_families()
    assert families["job"] == "gary:job:{job_id}" and len(families) > 30
    doc = (DOCS / "redis-keys.md").read_text()
    missing = sorted(f"{name} -> {pattern}" for name, pattern in families.items()
                     if f"`{pattern}`" not in doc or f"`{name}`" not in doc)
    assert not missing, f"key families of garycommon/rediskeys.py missing from docs/redis-keys.md: {missing}"


def test_links_between_docs_resolve() -> None:
    """A newcomer follows links: every relative link in README.md and docs/*.md names a file that exists."""
    link = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
    broken = []
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target in link.findall(page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, f"links to missing files: {broken}"
