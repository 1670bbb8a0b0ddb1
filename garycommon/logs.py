"""Logging set-up shared by every server: one line format naming the service, for every logger in the process.

Every line carries time, service and level: uvicorn's own lines and access lines included (they come through the
root handler instead of uvicorn's bare `INFO:` format), and library loggers that bring their own handler (the HF hub's
retry warnings) are routed through it once instead of printed twice. Requests that repeat while nothing happens
(heartbeats, health checks, status polls) are access-logged at DEBUG.
"""

from __future__ import annotations

import logging

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# access-log paths that only say "still here": logged at DEBUG
QUIET_SUFFIXES = ("/heartbeat", "/health", "/metrics")
QUIET_PREFIXES = ("/api/juce/poll_status/", "/leases/", "/tasks/")
# libraries that attach a handler of their own (and then also propagate to ours: every line twice)
OWN_HANDLER_LIBRARIES = ("huggingface_hub",)


def log_format(service: str) -> str:
    return f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"


def quiet_path(path: str) -> bool:
    """Heartbeats, health and metrics scrapes, status polls and lease long-polls (`GET`s only, see the filter)."""
    path = path.split("?", 1)[0]
    return path.endswith(QUIET_SUFFIXES) or (path.startswith(QUIET_PREFIXES) and not path.endswith("/release"))


class QuietAccess(logging.Filter):
    """Demotes uvicorn access lines for idle traffic to DEBUG (kept when the level is DEBUG, dropped otherwise)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and record.levelno == logging.INFO:
            method, path = str(args[1]), str(args[2])
            if quiet_path(path) and (method == "GET" or path.split("?", 1)[0].endswith("/heartbeat")):
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def setup_logging(service: str, level: str = "INFO") -> logging.Logger:
    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(log_format(service)))
    handler.gary_service = service  # type: ignore[attr-defined]  # ours: replaced when called again
    for old in list(root.handlers):
        if hasattr(old, "gary_service"):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for name in OWN_HANDLER_LIBRARIES:
        _route_through_root(name)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, QuietAccess) for f in access.filters):
        access.addFilter(QuietAccess())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # no handlers of their own: ours, once
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    return logging.getLogger(service)


def _route_through_root(name: str) -> None:
    """Import the library's logging set-up now (it adds its handler on import), then take that handler away."""
    if name == "huggingface_hub":
        try:
            from huggingface_hub.utils import logging as hf_logging

            hf_logging.get_logger()  # runs its one-time configuration
        except ImportError:
            return
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = True
