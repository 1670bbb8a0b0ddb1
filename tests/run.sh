#!/usr/bin/env bash
# The test command of the README, and what .ci/run runs: installs everything the suite needs on a fresh Linux
# machine (redis-server from apt, the runtime lock (torch 2.11) + the project + the reference libraries in .venv, the
# MongoDB-wire test server secantusdb in its own venv), checks ruff, then runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP_FLAGS=(-q --disable-pip-version-check)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v redis-server >/dev/null 2>&1; then
  echo "== installing redis-server (apt)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server >/dev/null
fi
if [ ! -x /usr/bin/chromium ]; then
  echo "== installing chromium (apt; the web console tests drive it with Playwright)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium >/dev/null
fi

echo "== python environment (.venv)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
V=.venv/bin
# The runtime lock first (torch 2.11.0 included): exactly what the images and the README's run command install. The
# lock and the constraints file keep every later install from moving a locked version.
"$V/pip" install "${PIP_FLAGS[@]}" -r requirements/runtime.lock.txt
"$V/pip" install "${PIP_FLAGS[@]}" -c requirements/runtime.lock.txt -c requirements/constraints.txt -e ".[test]"
# Reference libraries for the parity tests: their import-time needs with deps, the libraries themselves without
# (their pins are stale; they run on torch 2.11).
"$V/pip" install "${PIP_FLAGS[@]}" -c requirements/runtime.lock.txt -c requirements/constraints.txt -r requirements/reference.txt
"$V/pip" install "${PIP_FLAGS[@]}" --no-deps -r requirements/reference-nodeps.txt

echo "== MongoDB-wire test server (secantusdb, GPL: test tool only, own venv)"
if [ ! -x .venv-secantus/bin/secantusd-py ]; then
  "$PY" -m venv .venv-secantus
  .venv-secantus/bin/pip install "${PIP_FLAGS[@]}" secantusdb==0.7.0b3
fi

if [ -f tests/node/package.json ]; then
  echo "== node packages (real socket.io-client as gary4live uses it)"
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
fi

set +e
echo "== ruff"
"$V/ruff" check .
lint=$?
echo "== pytest"
"$V/python" -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests for the given selection"
  rc=0
fi
if [ "$lint" -ne 0 ]; then
  echo "ruff found problems (see above)"
  [ "$rc" -ne 0 ] || rc=$lint
fi
exit "$rc"
