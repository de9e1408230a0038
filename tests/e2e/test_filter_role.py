"""The built-in filter role as Postfix's content_filter, with real spamd and
clamd: a clean message arrives once with the scanners' headers, GTUBE is
refused (the sender gets the filter's reply in a bounce), EICAR is held
until released, and a filter killed mid-scan loses nothing: the message is
scanned again and arrives once."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from postfleet.core.testing.cluster import Cluster
from postfleet.core.testing.scanners import EICAR, GTUBE, Clamd, Spamd
from postfleet.core.testing.sink import SmtpSink
from postfleet.core.testing.swaks import swaks

from .conftest import eventually, queue_counts, relay_config, start

pytestmark = pytest.mark.slow

POSTFLEET = str(Path(sys.executable).parent / "postfleet")


def filter_config(destination: SmtpSink, senders_mx: SmtpSink, spamd: Spamd, clamd: Clamd,
                  **filter_settings: Any) -> dict[str, Any]:
    config = relay_config(destination, transport_maps={
        "example.test": f"smtp:{destination.nexthop}",
        "sender.test": f"smtp:{senders_mx.nexthop}"})
    config["content_filter"] = "filter:"
    config["filter"] = {"spamd_address": spamd.address, "clamd_address": clamd.address,
                        "virus_action": "hold", "spam_action": "reject",
                        "filter_ack_wait": "4s", **filter_settings}
    return config


async def send(port: int, body: str, subject: str = "test") -> str:
    code, out = await swaks(port, "--from", "alice@sender.test", "--to", "bob@example.test",
                            "--header", f"Subject: {subject}", "--body", body)
    assert code == 0, out
    return out.split("queued as ")[1].split()[0]


async def _empty(url: str) -> bool:
    return await queue_counts(url) == {"messages": 0, "recipients": 0}


async def test_clean_gtube_and_eicar_through_the_built_in_chain(
        postgres_url: str, spamd: Spamd, clamd: Clamd, tmp_path: Path,
        make_cluster: Callable[..., Cluster]) -> None:
    with SmtpSink() as destination, SmtpSink() as senders_mx:
        cluster = await start(make_cluster(
            postgres_url, filter_config(destination, senders_mx, spamd, clamd),
            extra_roles=("filter",)))
        port = cluster.smtp_port

        clean_id = await send(port, "just a friendly note", "clean")
        (clean,) = await destination.wait_for(1, timeout=60)
        assert clean.message["Subject"] == "clean"
        assert clean.message["X-Virus-Scanned"] == "clamd at mx.postfleet.test"
        assert clean.message["X-Spam-Status"].startswith("No, score=")
        assert f"id {clean_id}" in clean.data.decode()  # the original's Received: kept
        assert await eventually(lambda: _empty(postgres_url), what="both entries to leave")

        spam_id = await send(port, GTUBE, "spam")
        (notice,) = await senders_mx.wait_for(1, timeout=60)
        assert notice.recipients == ["alice@sender.test"]
        score = re.search(r"554 5\.7\.0 Rejected: spam \(score ([\d.]+)\)", notice.data.decode())
        assert score is not None and float(score.group(1)) > 900  # GTUBE scores 1000
        assert f"X-Postfix-Queue-ID: {spam_id}" in notice.data.decode()
        assert await eventually(lambda: _empty(postgres_url), what="the spam to leave")

        await send(port, f"see attached\r\n{EICAR}", "virus")
        listing = await eventually(lambda: _held(cluster), timeout=60, what="a held copy")
        held_id = listing.split("!")[0].split()[-1]
        assert "INFECTED: Eicar-Test-Signature" in cluster.roles["filter"].log()
        await asyncio.to_thread(_postfleet, cluster, "release", held_id)
        await destination.wait_for(2, timeout=60)
        assert destination.messages[1].message["Subject"] == "virus"
        assert await eventually(lambda: _empty(postgres_url), what="the virus to leave")
        assert len(destination.messages) == 2


def _postfleet(cluster: Cluster, *args: str) -> str:
    api = f"http://127.0.0.1:{cluster.roles['qmgr'].http_port}"
    done = subprocess.run([POSTFLEET, "queue", *args, "--api", api], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def _held(cluster: Cluster) -> str:
    listing = await asyncio.to_thread(_postfleet, cluster, "list")
    return listing if "!" in listing else ""


async def test_a_filter_killed_mid_scan_loses_nothing(
        postgres_url: str, spamd: Spamd, clamd: Clamd,
        make_cluster: Callable[..., Cluster]) -> None:
    with SmtpSink() as destination, SmtpSink() as senders_mx:
        cluster = await start(make_cluster(
            postgres_url, filter_config(destination, senders_mx, spamd, clamd,
                                        spamd_timeout="120s"),
            extra_roles=("filter",)))
        assert spamd.proc is not None
        os.kill(spamd.proc.pid, signal.SIGSTOP)  # the scan hangs in spamd
        try:
            await send(cluster.smtp_port, "scan me twice", "killed")
            await eventually(lambda: "scanning" in cluster.roles["filter"].log(), timeout=30,
                             what="the filter to be inside a scan")
            cluster.kill("filter")
        finally:
            os.kill(spamd.proc.pid, signal.SIGCONT)
        await asyncio.to_thread(cluster.start, "filter")
        (received,) = await destination.wait_for(1, timeout=90)
        assert received.message["Subject"] == "killed"
        assert received.message["X-Spam-Status"].startswith("No, score=")
        assert await eventually(lambda: _empty(postgres_url), timeout=30,
                                what="the queue to empty")
        await asyncio.sleep(1)
        assert len(destination.messages) == 1

