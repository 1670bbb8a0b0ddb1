"""A small reader of the root Dockerfile, so the deploy tests follow its stages instead of restating them."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Stage:
    name: str
    base: str
    steps: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def args_of(self, instruction: str) -> list[str]:
        return [a for i, a in self.steps if i == instruction]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
    return out


def parse(path: Path = DOCKERFILE) -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARG defaults and the stages by name."""
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for instruction, rest in instructions(path.read_text()):
        if instruction == "FROM":
            words = rest.split()
            base = words[0]
            for key, value in args.items():
                base = base.replace("${" + key + "}", value)
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else f"stage{len(stages)}"
            current = stages[name] = Stage(name, base)
        elif current is None and instruction == "ARG":
            key, _, value = rest.partition("=")
            args[key] = value
        elif current is not None:
            current.steps.append((instruction, rest))
    return args, stages


def chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, base first."""
    out = [stages[name]]
    while out[0].base in stages:
        out.insert(0, stages[out[0].base])
    return out


def steps(stages: dict[str, Stage], name: str) -> list[tuple[str, str]]:
    return [s for st in chain(stages, name) for s in st.steps]


def run_calls(stages: dict[str, Stage], name: str) -> list[list[str]]:
    return [shlex.split(a) for i, a in steps(stages, name) if i == "RUN"]


def cmd(stages: dict[str, Stage], name: str) -> list[str]:
    return json.loads([a for i, a in steps(stages, name) if i == "CMD"][-1])


def healthcheck(stages: dict[str, Stage], name: str) -> list[str]:
    """The HEALTHCHECK's command (after CMD), as argv."""
    spec = [a for i, a in steps(stages, name) if i == "HEALTHCHECK"][-1]
    return shlex.split(spec.split(" CMD ", 1)[1])


def env(stages: dict[str, Stage], name: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, a in steps(stages, name):
        if i == "ENV":
            for word in shlex.split(a):
                key, _, value = word.partition("=")
                out[key] = value
    return out
