#!/usr/bin/env bash
# The one install recipe of the images: the Dockerfile runs it, and tests/deploy/test_images.py runs it into fresh
# virtualenvs (same Python minor, same locks) before starting each service from them, so the two cannot drift.
#
#   deploy/install.sh TARGET [PHASE...]
#     TARGET  base   the `system` phase only (what every image shares)
#             gpu    gary, jerry and terry: the whole runtime lock (torch included) + the project
#             queue  the queue gateway: requirements/queue.lock.txt (no torch) + the project without its dependencies
#     PHASE   system the image's user and folders (root, images only)
#             deps   the locked wheels, exactly as locked (--no-deps: the lock is the whole closure)
#             project  the project itself (code changes rebuild only this layer), then `pip check` and an import check
#     No PHASE: deps then project (what the test runs; `system` needs root and belongs to the image only).
# Runs `${PYTHON:-python}` from the repository root (the image's WORKDIR).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
target=${1:?usage: deploy/install.sh gpu|queue [system|deps|project ...]}
shift
phases=("$@")
[ ${#phases[@]} -gt 0 ] || phases=(deps project)

case "$target" in
  base) lock= imports= ;;
  gpu) lock=requirements/runtime.lock.txt
       imports="import gary.app, gary.cli, jerry.app, jerry.cli, jerry.sao, terry.app, terry.cli, garystack.cli" ;;
  queue) lock=requirements/queue.lock.txt
         imports="import gpuqueue.app, gpuqueue.cli, garycommon.queueclient" ;;
  *) echo "unknown target $target (gpu or queue)" >&2; exit 2 ;;
esac
pip=("$PY" -m pip install --disable-pip-version-check --no-input)

for phase in "${phases[@]}"; do
  case "$phase" in
    system)
      # uid 1000 (the stack's convention); the mount points exist and belong to it so fresh named volumes (HF cache,
      # transfer folder, data, riffs) start out writable.
      useradd --create-home --uid 1000 app
      mkdir -p /cache/huggingface /tmp/audio_transfer /data/riffs
      chown -R app:app /cache /tmp/audio_transfer /data ;;
    deps|project) [ -n "$lock" ] || { echo "$target has no $phase phase" >&2; exit 2; } ;;&
    deps)
      "${pip[@]}" --no-deps --only-binary=:all: --no-binary=antlr4-python3-runtime -r "$lock" ;;
    project)
      "${pip[@]}" --no-deps .
      check=$("$PY" -m pip check 2>&1) || true
      if [ "$target" = queue ]; then
        # The project's metadata names the engines' dependencies (torch, ...), which this image leaves out on purpose:
        # only those lines may remain, and only for packages the runtime lock holds.
        check=$(printf '%s\n' "$check" | while read -r line; do
          pkg=$(printf '%s' "$line" | sed -n 's/^gary-backend [^ ]* requires \([^,]*\), which is not installed\.$/\1/p')
          if [ -n "$pkg" ] && grep -qi "^${pkg}==" requirements/runtime.lock.txt; then continue; fi
          [ "$line" = "No broken requirements found." ] || printf '%s\n' "$line"
        done)
        if "$PY" -c "import torch" 2>/dev/null; then echo "torch is importable in the queue image" >&2; exit 1; fi
      elif [ "$check" = "No broken requirements found." ]; then
        check=
      fi
      if [ -n "$check" ]; then echo "pip check failed:" >&2; echo "$check" >&2; exit 1; fi
      "$PY" -c "$imports" ;;
    *) echo "unknown phase $phase" >&2; exit 2 ;;
  esac
done
