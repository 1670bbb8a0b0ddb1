# The gary stack's images, all from this one file (build from the repository root; compose picks the target):
#   base    Python + the unprivileged user and folders + the install recipe and the locks
#   queue   the GPU queue gateway (:8085): requirements/queue.lock.txt, no torch
#   engines the whole runtime lock (torch 2.11.0 with its CUDA libraries as wheels: no CUDA base image needed, the
#           NVIDIA container toolkit brings the driver) + the project
#   gary / jerry / terry  the engines image, differing only in the port they serve and the command they run
# Every RUN is deploy/install.sh, which tests/deploy/test_images.py also runs into fresh virtualenvs (same Python
# minor, same locks) before starting each service from them: change the recipe there, not here.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    TRANSFER_DIR=/tmp/audio_transfer \
    DATA_DIR=/data
WORKDIR /app
COPY deploy/install.sh deploy/install.sh
RUN deploy/install.sh base system
COPY requirements/runtime.lock.txt requirements/queue.lock.txt requirements/

# The project's source, gathered once; each image copies it whole after its own (slow, cached) dependency layer.
FROM scratch AS source
COPY pyproject.toml README.md /src/
COPY garycommon /src/garycommon
COPY garystack /src/garystack
COPY gary /src/gary
COPY jerry /src/jerry
COPY terry /src/terry
COPY queue /src/queue

FROM base AS queue
RUN deploy/install.sh queue deps
# The whole source tree only because pyproject lists every package; the services' code is inert here.
COPY --from=source /src/ ./
RUN deploy/install.sh queue project
USER app
EXPOSE 8085
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8085/health', timeout=5)"
CMD ["gpu-queue-server", "--host", "0.0.0.0", "--port", "8085"]

FROM base AS engines
# The slow layer (a few GB of wheels) first, so code edits rebuild only the project layer.
RUN deploy/install.sh gpu deps
COPY --from=source /src/ ./
RUN deploy/install.sh gpu project
USER app

# gary: MusicGen continuation (gary4live Socket.IO at /socket.io, gary4juce /api/juce/*). One process per container:
# it owns the GPU worker and the loaded models; Socket.IO rooms are shared through Redis.
FROM engines AS gary
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=5)"
CMD ["gary-server", "--host", "0.0.0.0", "--port", "8000"]

# jerry: stable-audio-open-small. /health is 503 while the model loads and warms up, 200 once ready. Riffs for
# /generate/loop-with-riff live in DATA_DIR/riffs (a volume: drop <key>_<bpm>bpm.wav files in it).
FROM engines AS jerry
EXPOSE 8005
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8005/health', timeout=5)"
CMD ["jerry-server", "--host", "0.0.0.0", "--port", "8005"]

# terry: MelodyFlow transforms; reads audio_file_path only from the transfer folder shared with gary.
FROM engines AS terry
EXPOSE 8002
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8002/health', timeout=5)"
CMD ["terry-server", "--host", "0.0.0.0", "--port", "8002"]
