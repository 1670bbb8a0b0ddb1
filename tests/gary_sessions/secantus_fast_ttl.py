"""Start a SecantusDB server whose TTL monitor runs every few hundred ms (the CLI fixes it at 60 s).

Run with the .venv-secantus interpreter: `python secantus_fast_ttl.py PORT SWEEP_SECONDS`. Test helper only.
"""

from __future__ import annotations

import signal
import sys

from secantus.server import SecantusDBServer


def main() -> None:
    port, sweep = int(sys.argv[1]), float(sys.argv[2])
    server = SecantusDBServer(
        "127.0.0.1", port, ":memory:", replica_set_name=None, enable_test_commands=False, ttl_sweep_seconds=sweep
    )

    def stop(signum: int, frame: object) -> None:
        server.stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.start()
    server.wait()


if __name__ == "__main__":
    main()
