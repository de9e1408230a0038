"""Postfix's content_filter and cleanup's header/body checks, end to end:
a REJECT answers at end of DATA, a HOLD waits in the hold queue until
`postfleet queue release`, a listener's content_filter sends the message to
its filter instead of its destinations, and a re-injection listener
(content_filter empty, receive_override_options) turns the filter, address
mapping and checks off for what comes back."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from postfleet.core.testing.cluster import Cluster
from postfleet.core.testing.ports import free_port
from postfleet.core.testing.sink import SmtpSink
from postfleet.core.testing.swaks import swaks

from .conftest import eventually, queue_counts, relay_config, start

pytestmark = pytest.mark.slow

POSTFLEET = str(Path(sys.executable).parent / "postfleet")
REINJECT = ["no_address_mappings", "no_header_body_checks", "no_unknown_recipient_checks"]


def listeners(cluster_port: int, *extra: dict[str, object]) -> str:
    return json.dumps([{"name": "smtp", "address": "127.0.0.1", "port": cluster_port},
                       *extra])


def checks_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return f"pcre:{path}"


async def test_header_checks_reject_at_end_of_data_and_nothing_is_queued(
        postgres_url: str, smtp_sink: SmtpSink, tmp_path: Path,
        make_cluster: Callable[..., Cluster]) -> None:
    config = relay_config(smtp_sink)
    config["cleanup"] = {"header_checks": [checks_file(
        tmp_path, "header_checks", "/^Subject:.*make money/ REJECT\n")]}
    cluster = await start(make_cluster(postgres_url, config))
    code, out = await swaks(cluster.smtp_port, "--from", "a@sender.test",
                            "--to", "bob@example.test", "--header", "Subject: make money fast")
    assert code != 0
    assert "<** 550 5.7.1 message content rejected" in out
    assert await queue_counts(postgres_url) == {"messages": 0, "recipients": 0}
    log = cluster.roles["cleanup"].log()
    assert "reject: header Subject: make money fast from unknown[127.0.0.1]" in log
    assert "5.7.1 message content rejected" in log


async def test_hold_shows_in_the_queue_and_release_delivers(
        postgres_url: str, smtp_sink: SmtpSink, tmp_path: Path,
        make_cluster: Callable[..., Cluster]) -> None:
    config = relay_config(smtp_sink)
    config["cleanup"] = {"header_checks": [checks_file(
        tmp_path, "header_checks", "/^Subject: review me/ HOLD needs a look\n")]}
    cluster = await start(make_cluster(postgres_url, config))
    code, out = await swaks(cluster.smtp_port, "--from", "a@sender.test",
                            "--to", "bob@example.test", "--header", "Subject: review me")
    assert code == 0, out
    qid = out.split("queued as ")[1].split()[0]
    api = f"http://127.0.0.1:{cluster.roles['qmgr'].http_port}"

    def postfleet(*args: str) -> str:
        done = subprocess.run([POSTFLEET, "queue", *args, "--api", api], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    listing = await asyncio.to_thread(postfleet, "list")
    assert f"{qid}!" in listing and "bob@example.test" in listing
    await asyncio.sleep(2)  # two queue runs (queue_run_delay 1s): still held
    assert smtp_sink.messages == []
    await asyncio.to_thread(postfleet, "release", qid)
    (received,) = await smtp_sink.wait_for(1)
    assert f"id {qid}" in received.message["Received"]
    assert await eventually(lambda: _empty(postgres_url), what="the queue to empty")


async def _empty(url: str) -> bool:
    return await queue_counts(url) == {"messages": 0, "recipients": 0}


async def test_content_filter_goes_first_and_reinjection_skips_filter_mappings_and_checks(
        postgres_url: str, tmp_path: Path, make_cluster: Callable[..., Cluster]) -> None:
    """The listener's content_filter sends the message to the filter (here a
    sink standing on the filter's port) with its recipients as they are;
    the destination does not see it until the filter hands it back on the
    re-injection listener, where virtual aliases, checks and the filter are
    off."""
    with SmtpSink() as destination, SmtpSink() as content_filter, SmtpSink() as other:
        config = relay_config(destination, virtual_alias_maps={
            "bob@example.test": "robert@example.test"})
        config["cleanup"] = {"header_checks": [checks_file(
            tmp_path, "header_checks", "/^Subject: filtered/ REJECT not twice\n"
            f"/^Subject: divert/ FILTER smtp:{other.nexthop}\n")]}
        reinject_port = free_port()
        cluster = make_cluster(postgres_url, config,
                               POSTFLEET_CONTENT_FILTER=f"smtp:{content_filter.nexthop}")
        cluster.role_env("ingress-smtp")["POSTFLEET_LISTENERS"] = listeners(
            cluster.smtp_port,
            {"name": "reinject", "address": "127.0.0.1", "port": reinject_port,
             "overrides": {"content_filter": "", "receive_override_options": REINJECT}})
        await start(cluster)
        port = cluster.smtp_port
        code, out = await swaks(port, "--from", "a@sender.test", "--to", "bob@example.test",
                                "--header", "Subject: to be scanned")
        assert code == 0, out
        (scanned,) = await content_filter.wait_for(1)
        assert scanned.recipients == ["robert@example.test"]  # mapped once, before the filter
        assert await eventually(lambda: _empty(postgres_url), what="the original to leave")
        assert destination.messages == []

        # The filter hands it back: same recipient, a Subject the checks
        # would reject, an address the alias table would rewrite.
        back = scanned.data.replace(b"Subject: to be scanned", b"Subject: filtered")
        code, out = await swaks(reinject_port, "--from", "a@sender.test",
                                "--to", "bob@example.test", "--data", "-",
                                stdin=back)
        assert code == 0, out
        (final,) = await destination.wait_for(1)
        assert final.recipients == ["bob@example.test"]
        assert final.message["Subject"] == "filtered"
        assert len(content_filter.messages) == 1  # not filtered twice
        assert await eventually(lambda: _empty(postgres_url), what="the copy to leave")

        # A header check's FILTER overrides the listener's content_filter.
        code, out = await swaks(port, "--from", "a@sender.test", "--to", "bob@example.test",
                                "--header", "Subject: divert me")
        assert code == 0, out
        (diverted,) = await other.wait_for(1)
        assert diverted.message["Subject"] == "divert me"
        assert len(content_filter.messages) == 1 and len(destination.messages) == 1
