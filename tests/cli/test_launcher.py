"""What `postfleet run all` runs: every role once, ingress-smtp as many times
as ingress_processes says (two by default), and the filter role only when
the config sends mail to it."""

from __future__ import annotations

from pathlib import Path

import pytest

from postfleet.cli.launcher import Launcher, uses_filter_role


def _slots(cfg: dict) -> list[tuple[str, str]]:
    return Launcher(None, Path("var")).slots(cfg)


def test_the_default_runs_each_role_once_and_two_smtpd_processes() -> None:
    assert _slots({}) == [("cleanup-1", "cleanup"), ("qmgr-1", "qmgr"),
                          ("delivery-1", "delivery"), ("ingress-smtp-1", "ingress-smtp"),
                          ("ingress-smtp-2", "ingress-smtp")]


@pytest.mark.parametrize("cfg", [
    {"content_filter": "filter:"},
    {"ingress_smtp": {"listeners": [{"name": "smtp", "overrides": {
        "content_filter": "filter:[127.0.0.1]"}}]}},
    {"filter": {"header_checks": ["pcre:/etc/postfleet/header_checks"]}},
])
def test_the_filter_role_runs_when_mail_is_sent_to_it(cfg: dict) -> None:
    assert uses_filter_role(cfg)
    assert ("filter-1", "filter") in _slots(cfg)


def test_other_content_filters_need_no_filter_role() -> None:
    cfg = {"content_filter": "smtp:[127.0.0.1]:10025"}
    assert not uses_filter_role(cfg)
    assert all(role != "filter" for _, role in _slots(cfg))


def test_ingress_processes_is_read_and_checked() -> None:
    assert [s for s, r in _slots({"ingress_processes": 3}) if r == "ingress-smtp"] == [
        "ingress-smtp-1", "ingress-smtp-2", "ingress-smtp-3"]
    with pytest.raises(SystemExit, match="at least 1"):
        _slots({"ingress_processes": 0})


def test_cleanup_listens_on_private_cleanup_under_the_var_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Like Postfix's private/cleanup: a UNIX socket beside the queue, a
    loopback port only when the path is too long for one; an address the
    config or the environment names wins."""
    monkeypatch.delenv("POSTFLEET_CLEANUP_ADDRESS", raising=False)
    env = Launcher(None, tmp_path / "var").base_env({}, "nats://127.0.0.1:4222")
    socket = tmp_path.resolve() / "var" / "private" / "cleanup"
    assert env["POSTFLEET_CLEANUP_ADDRESS"] == env["POSTFLEET_CLEANUP_LISTEN"] == f"unix:{socket}"
    assert socket.parent.is_dir()

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    env = Launcher(None, deep).base_env({}, "nats://127.0.0.1:4222")
    assert env["POSTFLEET_CLEANUP_ADDRESS"].startswith("127.0.0.1:")

    env = Launcher(None, tmp_path / "var").base_env({"cleanup_address": "127.0.0.1:10027"},
                                                    "nats://127.0.0.1:4222")
    assert env["POSTFLEET_CLEANUP_ADDRESS"] == "127.0.0.1:10027"
