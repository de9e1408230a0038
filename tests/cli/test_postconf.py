"""`postfleet postconf`: each role run with --postconf tells its parameters
(effective value, default, set), and the command prints them as postconf
does: -n what is set, -d defaults, NAME one parameter, -H values only, a
role section's override per role."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

POSTFLEET = str(Path(sys.executable).parent / "postfleet")


def _postconf(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([POSTFLEET, "postconf", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_postconf_n_d_and_names_across_every_role(tmp_path: Path) -> None:
    config = tmp_path / "postfleet.yaml"
    config.write_text(yaml.safe_dump({
        "myhostname": "mx.postconf.test", "message_size_limit": 20480000,
        "maillog_file": "/var/log/postfleet.log",
        "qmgr": {"queue_run_delay": "1m"},
        "ingress_smtp": {"smtpd_banner": "$myhostname ESMTP here"},
        "database_url": "postgresql+asyncpg://mail:s3cret@db.example/postfleet",
    }))
    done = _postconf("-n", "--config", str(config))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "myhostname = mx.postconf.test" in lines
    assert "queue_run_delay = 1m" in lines  # only qmgr has it
    assert "maillog_file = /var/log/postfleet.log" in lines
    assert "smtpd_banner = $myhostname ESMTP here" in lines
    assert "database_url = postgresql+asyncpg://mail:***@db.example/postfleet" in lines
    assert not any(line.startswith(("smtpd_timeout", "maximal_queue_lifetime"))
                   for line in lines)  # left at their defaults
    # the top level's value, overridden by ingress-smtp's own section
    assert any(line.startswith("message_size_limit = 20480000") for line in lines)

    done = _postconf("-d", "message_size_limit", "maximal_queue_lifetime", "smtpd_timeout",
                     "syslog_name", "nosuch_parameter", "--config", str(config))
    assert done.stdout.splitlines() == [
        "message_size_limit = 10240000", "maximal_queue_lifetime = 5d",
        "smtpd_timeout = 5m", "syslog_name = postfix"]
    assert "nosuch_parameter: unknown parameter" in done.stderr


def test_one_role_a_section_override_and_values_only(tmp_path: Path) -> None:
    config = tmp_path / "postfleet.yaml"
    config.write_text(yaml.safe_dump({"queue_run_delay": "2m", "smtpd_timeout": "60s",
                                      "cleanup": {"myhostname": "cleanup.test"},
                                      "myhostname": "top.test"}))
    done = _postconf("--role", "qmgr", "-H", "queue_run_delay", "--config", str(config))
    assert done.stdout == "2m\n"
    done = _postconf("--role", "qmgr", "--role", "cleanup", "myhostname", "--config",
                     str(config))
    assert done.stdout.splitlines() == ["qmgr/myhostname = top.test",
                                        "cleanup/myhostname = cleanup.test"]
    env = {"POSTFLEET_CONFIG": str(config), "POSTFLEET_SMTPD_TIMEOUT": "2m",
           "PATH": "/usr/bin:/bin"}
    done = _postconf("--role", "ingress-smtp", "smtpd_timeout", env=env)
    assert done.stdout == "smtpd_timeout = 2m\n", done.stderr  # env beats the file


@pytest.mark.parametrize("role", ["ingress_smtp", "cleanup", "qmgr", "delivery", "filter"])
def test_a_role_process_does_not_load_what_no_role_uses(role: str) -> None:
    """role_entry marks nats-py's optional aiohttp (WebSocket URLs only)
    absent before the role's imports: the bus still imports, 8 MiB less."""
    probe = (
        "import sys\n"
        "from postfleet.core.postconf import skip_unused_imports\n"
        "skip_unused_imports()\n"
        f"import postfleet.{role}.main\n"
        "import nats.aio.client\n"
        "print(sorted(m for m in ('aiohttp', 'fastapi', 'alembic') if sys.modules.get(m)))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.strip()
    expected = ["fastapi"] if role == "qmgr" else []  # qmgr serves the admin API
    assert out == str(expected)
