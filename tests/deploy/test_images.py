"""The images' recipe, proven without a Docker engine.

Each image stage of the root Dockerfile is replayed into a fresh virtualenv: its COPY steps into a folder standing
for /app, its RUN steps (all `deploy/install.sh`, the recipe the image runs) with the same Python minor and the same
locks, `pip check` included. Then every service starts from those virtualenvs with its image CMD, in demo mode, wired
as compose wires them (real redis-server, MongoDB-wire server, queue gateway), until its image HEALTHCHECK passes.
The three GPU images install the same thing (one `engines` stage), so one virtualenv serves them; the queue gets its
own, torch-free. Wheels are kept in a wheelhouse under ~/.cache between runs (this machine's package proxy leaves
pip's HTTP cache empty), so a re-run only unpacks them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from packaging.requirements import Requirement

from tests.deploy import deploy_dockerfile as df
from tests.servers import free_port

pytestmark = pytest.mark.slow

ROOT = df.ROOT
WHEELHOUSE = Path(os.environ.get("GARY_WHEELHOUSE", Path.home() / ".cache" / "gary-deploy-wheels"))
GPU_SERVICES = ("gary", "jerry", "terry")
LOCKS = {"gpu": ROOT / "requirements" / "runtime.lock.txt", "queue": ROOT / "requirements" / "queue.lock.txt"}
IMAGE_ONLY_PHASES = {"system"}  # useradd/chown: root on the image, nothing to mirror in a virtualenv


def _pins(lock: Path) -> dict[str, str]:
    out = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
        if m:
            out.setdefault(m[1].lower().replace("_", "-"), m[2])
    return out


# --- the recipe, statically ------------------------------------------------------------------------------------------


def test_every_dockerfile_step_is_the_shared_install_script() -> None:
    args, stages = df.parse()
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == args["PYTHON_VERSION"], (
        "the deploy test must run the image's Python minor version")
    for name in ("queue", "engines", *GPU_SERVICES):
        calls = df.run_calls(stages, name)
        assert calls, name
        for call in calls:
            assert call[0] == "deploy/install.sh", f"{name}: a RUN step outside deploy/install.sh: {call}"
        target = "queue" if name == "queue" else "gpu"
        assert [c[1:] for c in calls if c[1] == "base"] == [["base", "system"]], (name, calls)
        phases = [p for c in calls for p in c[2:] if c[1] == target]
        assert phases == ["deps", "project"], (name, calls)
    for name in GPU_SERVICES:  # the three GPU images differ only in what they serve and run
        assert stages[name].base == "engines"
        assert {i for i, _ in stages[name].steps} == {"EXPOSE", "HEALTHCHECK", "CMD"}, name
        assert df.cmd(stages, name)[0] == f"{name}-server"
    for name in ("queue", "engines"):
        assert ("USER", "app") in stages[name].steps, f"{name} runs as root"


def test_locks_pin_every_package_and_the_queue_lock_is_the_runtime_lock_without_torch() -> None:
    runtime, queue = _pins(LOCKS["gpu"]), _pins(LOCKS["queue"])
    assert runtime["torch"] == "2.11.0" and runtime["torchaudio"] == "2.11.0"
    for lock in LOCKS.values():
        for line in lock.read_text().splitlines():
            if line and not line.startswith((" ", "#")):
                assert "==" in line, f"{lock.name}: not an exact pin: {line}"
    assert "torch" not in queue and "transformers" not in queue
    drift = {k: (v, runtime.get(k)) for k, v in queue.items() if runtime.get(k) != v}
    assert not drift, f"queue.lock.txt and runtime.lock.txt disagree (recompile, requirements/README.md): {drift}"
    # the CI venv (tests/run.sh) and the README's run command install the runtime lock itself
    assert re.search(r"^\"\$V/pip\" install .*-r requirements/runtime\.lock\.txt$", (ROOT / "tests" / "run.sh").read_text(), re.M)
    setup = (ROOT / "README.md").read_text().split("## Set-up on a fresh Linux machine", 1)[1].split("```bash", 1)[1]
    assert "pip install -r requirements/runtime.lock.txt" in setup.split("```", 1)[0]


def test_compose_builds_the_dockerfile_targets() -> None:
    _, stages = df.parse()
    for path in ("docker-compose.yml", "docker-compose.worker.yml"):
        services = yaml.safe_load((ROOT / path).read_text())["services"]
        for name in ("queue", *GPU_SERVICES):
            if name in services:
                assert services[name]["build"] == {"context": ".", "dockerfile": "Dockerfile", "target": name}, path
                assert name in stages


# --- the recipe, replayed --------------------------------------------------------------------------------------------


def _copy_steps(stage: str, app: Path) -> None:
    """The stage's COPY steps into `app`, the folder standing for its WORKDIR (and, for a stage without one, its
    root), with Docker's rules: a folder's contents go into the destination; files go into a destination ending in
    `/`. `COPY --from=<stage>` takes what that stage's own COPY steps gathered."""
    _, stages = df.parse()
    for instruction, rest in df.steps(stages, stage):
        if instruction != "COPY":
            continue
        words = rest.split()
        origin = ROOT
        if words[0].startswith("--from="):
            other = words.pop(0).removeprefix("--from=")
            origin = app.parent / f"{app.name}-from-{other}"
            if not origin.exists():
                _copy_steps(other, origin)
        *sources, dest = words
        into_dir = dest.endswith("/") or len(sources) > 1
        target = app / dest.strip("/")
        for src in sources:
            source = origin / src.strip("/")
            if source.is_dir():
                shutil.copytree(source, target, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "node_modules"))
            else:
                (target if into_dir else target.parent).mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / source.name if into_dir else target)


def _fill_wheelhouse(target: str) -> None:
    """Every locked wheel (and the project's build requirements) in the wheelhouse; present files are not re-fetched."""
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "-d", str(WHEELHOUSE)]
    subprocess.run([*pip, "--no-deps", "--only-binary=:all:", "--no-binary=antlr4-python3-runtime",
                    "-r", str(LOCKS[target])], check=True, timeout=1800)
    subprocess.run([*pip, "setuptools>=69,<81", "wheel"], check=True, timeout=600)


def _image_venv(target: str, stage: str, root: Path) -> tuple[Path, Path]:
    """(app folder, virtualenv) for the stage, built by its own COPY and RUN steps."""
    app, venv = root / f"{stage}-app", root / f"{stage}-venv"
    _copy_steps(stage, app)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    _fill_wheelhouse(target)
    _, stages = df.parse()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(df.env(stages, stage), PYTHON=str(venv / "bin" / "python"), PIP_NO_INDEX="1",
               PIP_FIND_LINKS=str(WHEELHOUSE), PATH=f"{venv / 'bin'}:{os.environ['PATH']}")
    env.pop("PIP_NO_CACHE_DIR", None)
    for call in df.run_calls(stages, stage):
        if IMAGE_ONLY_PHASES.intersection(call[2:]):
            continue
        done = subprocess.run(["bash", *call], cwd=app, env=env, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, f"{' '.join(call)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return app, venv


@pytest.fixture(scope="module")
def image_envs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("images")
    return {"queue": _image_venv("queue", "queue", root), "engines": _image_venv("gpu", "engines", root)}


def test_image_venvs_hold_exactly_the_locks(image_envs: dict[str, tuple[Path, Path]]) -> None:
    for stage, target in (("queue", "queue"), ("engines", "gpu")):
        _, venv = image_envs[stage]
        freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze", "--all", "--exclude-editable"],
                                capture_output=True, text=True, check=True).stdout
        installed = {k: v for k, v in (line.split("==", 1) for line in freeze.splitlines() if "==" in line)}
        installed = {k.lower().replace("_", "-"): v for k, v in installed.items()}
        for line in LOCKS[target].read_text().splitlines():
            if not line or line.startswith((" ", "#")):
                continue
            req = Requirement(line)  # same interpreter as the venv: its markers evaluate alike here
            if req.marker is not None and not req.marker.evaluate():
                continue
            version = str(req.specifier).removeprefix("==")
            name = req.name.lower().replace("_", "-")
            assert installed.get(name) == version, f"{stage}: {name} {installed.get(name)} != locked {version}"
        assert ("torch" in installed) == (target == "gpu")


@pytest.fixture(scope="module")
def live_images(image_envs: dict[str, tuple[Path, Path]], redis_server, mongo_server,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """queue, terry, jerry and gary started from the image virtualenvs with their image CMDs, in demo mode."""
    _, stages = df.parse()
    tmp = tmp_path_factory.mktemp("live")
    ports = {name: free_port() for name in ("queue", *GPU_SERVICES)}
    compose_env = {
        "REDIS_URL": redis_server.url, "MONGODB_URL": mongo_server.url, "SESSION_STORE": "mongo",
        "QUEUE_URL": f"http://127.0.0.1:{ports['queue']}", "GARY_URL": f"http://127.0.0.1:{ports['gary']}",
        "TERRY_URL": f"http://127.0.0.1:{ports['terry']}", "JERRY_URL": f"http://127.0.0.1:{ports['jerry']}",
        "DEMO_MODELS": "1", "HF_HUB_OFFLINE": "1", "GARY_OUTPUT_SECONDS": "4",
    }
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name in ("queue", "terry", "jerry", "gary"):
            app, venv = image_envs["queue" if name == "queue" else "engines"]
            env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV", "PYTHON"))}
            env.update(df.env(stages, name), **compose_env, PATH=f"{venv / 'bin'}:{os.environ['PATH']}",
                       HF_HOME=str(tmp / "hf"), DATA_DIR=str(tmp / f"data-{name}"), TRANSFER_DIR=str(tmp / "transfer"))
            argv = df.cmd(stages, name)
            argv = [str(venv / "bin" / argv[0]), *argv[1:], "--host", "127.0.0.1", "--port", str(ports[name])]
            log = (tmp / f"{name}.log").open("w")
            procs[name] = subprocess.Popen(argv, cwd=app, env=env, stdout=log, stderr=subprocess.STDOUT)
        for name, proc in procs.items():  # each image's own HEALTHCHECK, pointed at the test's port
            _, venv = image_envs["queue" if name == "queue" else "engines"]
            probe = [a.replace(f":{_image_port(stages, name)}/", f":{ports[name]}/") for a in df.healthcheck(stages, name)]
            probe[0] = str(venv / "bin" / probe[0])
            deadline = time.monotonic() + 300
            while True:
                assert proc.poll() is None, f"{name} exited:\n{(tmp / f'{name}.log').read_text()[-4000:]}"
                if subprocess.run(probe, capture_output=True, timeout=30).returncode == 0:
                    break
                assert time.monotonic() < deadline, f"{name} never healthy:\n{(tmp / f'{name}.log').read_text()[-4000:]}"
                time.sleep(1)
        yield ports
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _image_port(stages: dict[str, df.Stage], name: str) -> str:
    return df.cmd(stages, name)[df.cmd(stages, name).index("--port") + 1]


def test_each_service_starts_from_its_image_recipe(live_images: dict[str, int]) -> None:
    with httpx.Client(timeout=30) as http:
        for name, port in live_images.items():
            r = http.get(f"http://127.0.0.1:{port}/health")
            assert r.status_code == 200, (name, r.text)
        # jerry answers a real generation from the image venv (tiny demo weights)
        r = http.post(f"http://127.0.0.1:{live_images['jerry']}/generate",
                      json={"prompt": "lofi drums 90bpm", "steps": 4, "return_format": "base64", "seed": 3})
        assert r.status_code == 200 and r.json()["success"] is True, r.text


def _families(text: str) -> set[str]:
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def test_every_metric_the_dashboard_charts_is_served(live_images: dict[str, int]) -> None:
    """Each metric named in the Grafana dashboard is a family some live service's /metrics declares."""
    dashboard = (ROOT / "monitoring" / "grafana" / "dashboards" / "gary.json").read_text()
    named = set(re.findall(r"\b((?:gary|jerry|terry|gq)_[a-z_]+)", dashboard))
    wanted = {re.sub(r"_(bucket|sum|count)$", "", n) for n in named}
    served: dict[str, set[str]] = {}
    with httpx.Client(timeout=30) as http:
        for name, port in live_images.items():
            r = http.get(f"http://127.0.0.1:{port}/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), (name, r.text[:200])
            served[name] = _families(r.text)
    every = set().union(*served.values())
    assert wanted and not wanted - every, f"charted but served by no service: {sorted(wanted - every)}"
    assert {"gary_jobs_total", "gary_generation_seconds", "gary_queue_wait_seconds"} <= served["gary"]
    assert {"jerry_generation_seconds", "jerry_batch_size"} <= served["jerry"]
    assert {"terry_transform_seconds"} <= served["terry"]
    # prometheus.yml scrapes each service on its compose port
    scrape = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())["scrape_configs"]
    _, stages = df.parse()
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in scrape}
    assert targets == {name: f"{name}:{_image_port(stages, name)}" for name in ("gary", "jerry", "terry", "queue")}


def test_jerry_metrics_count_real_requests(live_images: dict[str, int]) -> None:
    """The generation in test_each_service_starts_from_its_image_recipe (same module, before this) shows up."""
    text = httpx.get(f"http://127.0.0.1:{live_images['jerry']}/metrics", timeout=30).text
    counts = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith(("jerry_batch_size_count",
                                                                                         "jerry_generation_seconds_count")))
    assert float(counts["jerry_batch_size_count"]) >= 1 and float(counts["jerry_generation_seconds_count"]) >= 1, text
