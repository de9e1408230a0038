"""examples/content-filter: the tutorial's content filters (section 6) with
real scanners, end to end through every role. Each setup must deliver a
clean message once, refuse GTUBE and EICAR (the sender gets the filter's
reply in a bounce), and leave nothing in the queue.

- pipe/: the pipe transport runs the tutorial's shell script, which scans
  with clamdscan and spamc and re-injects with `postfleet sendmail`;
- amavis/: Debian's amavisd-new on 10025 (reached over SMTP, XFORWARD
  offered) hands the result back on the 10026 listener.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from postfleet.core.testing.cluster import Cluster
from postfleet.core.testing.ports import free_port
from postfleet.core.testing.scanners import EICAR, GTUBE, Amavisd, Clamd, Spamd
from postfleet.core.testing.sink import Received, SmtpSink
from postfleet.core.testing.swaks import swaks

from ..e2e.conftest import FAST_QMGR, eventually, queue_counts, start

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "content-filter"
POSTFLEET = str(Path(sys.executable).parent / "postfleet")


def example(name: str, destination: SmtpSink, senders_mx: SmtpSink) -> dict[str, Any]:
    """The example's config, its routes pointed at the test's sinks."""
    config = yaml.safe_load((EXAMPLE / name / "postfleet.yaml").read_text())
    config["routing"]["transport_maps"] = {"example.test": f"smtp:{destination.nexthop}",
                                           "sender.test": f"smtp:{senders_mx.nexthop}"}
    config["qmgr"] = dict(FAST_QMGR)
    return config


def listen(cluster: Cluster, config: dict[str, Any], **ports: int) -> None:
    """The example's listeners, the first on the cluster's SMTP port."""
    listeners = config["ingress_smtp"]["listeners"]
    listeners[0]["port"] = cluster.smtp_port
    for lst in listeners[1:]:
        lst["port"] = ports.get(lst["name"], lst["port"])
    cluster.role_env("ingress-smtp")["POSTFLEET_LISTENERS"] = json.dumps(listeners)


async def three_messages(port: int, destination: SmtpSink, senders_mx: SmtpSink,
                         url: str) -> tuple[Received, list[str]]:
    """Clean, GTUBE, EICAR: the clean one arrives once, the others bounce."""
    for subject, body in (("clean", "a friendly note"), ("spam", GTUBE),
                          ("virus", f"see this\r\n{EICAR}")):
        code, out = await swaks(port, "--from", "alice@sender.test", "--to", "bob@example.test",
                                "--header", f"Subject: {subject}", "--body", body)
        assert code == 0, out
    (clean,) = await destination.wait_for(1, timeout=120)
    notices = await senders_mx.wait_for(2, timeout=120)
    assert await eventually(lambda: _empty(url), timeout=60, what="the queue to empty")
    assert len(destination.messages) == 1 and len(senders_mx.messages) == 2
    return clean, [n.data.decode(errors="replace") for n in notices]


async def _empty(url: str) -> bool:
    return await queue_counts(url) == {"messages": 0, "recipients": 0}


async def test_the_pipe_filter_rescans_with_clamd_and_spamd_and_reinjects_with_sendmail(
        postgres_url: str, spamd: Spamd, clamd: Clamd, tmp_path: Path,
        make_cluster: Callable[..., Cluster]) -> None:
    clamd_conf = tmp_path / "clamdscan.conf"
    clamd_conf.write_text(f"TCPSocket {clamd.port}\nTCPAddr 127.0.0.1\n")
    with SmtpSink() as destination, SmtpSink() as senders_mx:
        config = example("pipe", destination, senders_mx)
        pipes = config["delivery"]["pipe_transports"]
        pipes["filtro"] = pipes["filtro"].replace("argv=examples/", f"argv={ROOT}/examples/")
        cluster = make_cluster(postgres_url, config, SENDMAIL=f"{POSTFLEET} sendmail",
                               CLAMD_CONF=str(clamd_conf), SPAMD_HOST="127.0.0.1",
                               SPAMD_PORT=str(spamd.port))
        listen(cluster, config)
        await start(cluster)
        clean, notices = await three_messages(cluster.smtp_port, destination, senders_mx,
                                              postgres_url)
    assert clean.message["Subject"] == "clean"
    assert clean.message["X-Spam-Status"].startswith("No, score=")  # spamc's
    assert clean.message["Return-Path"] == "<alice@sender.test>"  # flags=R
    spam, virus = sorted(notices, key=lambda n: "virus found" in n)
    # The script's "5.7.1 text" output: the status, then the text (pipe(8)).
    assert "<bob@example.test>: message rejected as spam" in spam and "Status: 5.7.1" in spam
    # The notice folds long lines as Postfix's bounce does: compare unfolded.
    assert "message rejected: virus found: Eicar-Test-Signature" in " ".join(virus.split())
    assert "Status: 5.7.1" in virus
    log = cluster.roles["delivery"].log()
    assert "relay=none" in log and "status=sent (delivered via filtro service)" in log


async def test_amavisd_new_on_the_way_out_and_the_reinjection_listener_on_the_way_back(
        postgres_url: str, clamd: Clamd, make_cluster: Callable[..., Cluster]) -> None:
    reinject_port = free_port()
    conf = (EXAMPLE / "amavis" / "amavisd.conf").read_text()
    conf = conf.replace("[127.0.0.1]:10026", f"[127.0.0.1]:{reinject_port}")
    conf = conf.replace('"127.0.0.1:3310"', f'"{clamd.address}"')
    with Amavisd(conf) as amavis, SmtpSink() as destination, SmtpSink() as senders_mx:
        config = example("amavis", destination, senders_mx)
        assert config["content_filter"] == "smtp:[127.0.0.1]:10025"
        config["content_filter"] = f"smtp:[127.0.0.1]:{amavis.port}"
        cluster = make_cluster(postgres_url, config)
        listen(cluster, config, reinject=reinject_port)
        await start(cluster)
        try:
            clean, notices = await three_messages(cluster.smtp_port, destination, senders_mx,
                                                  postgres_url)
        finally:
            log = amavis.log()
    assert clean.message["Subject"] == "clean"
    assert "amavis" in clean.message["X-Virus-Scanned"]
    assert clean.message["X-Spam-Status"].startswith("No")
    # Two Received: lines of postfleet's (before and after the filter) around amavis's.
    assert len(clean.message.get_all("Received")) >= 3
    assert all("554 5.7.0 Reject" in notice for notice in notices)  # amavis's reply
    assert "Blocked SPAM" in log and "Blocked INFECTED (Eicar-Test-Signature" in log
    # XFORWARD: amavis knows the message by the original queue id.
    original = clean.message.get_all("Received")[-1]
    queue_id = original.split(" id ")[1].split()[0].rstrip(";")
    assert f"Queue-ID: {queue_id}" in log
