"""The tutorial's univ.es tier end to end: dnsmasq serves the univ.es zone on
a loopback port, each next hop is a real SMTP server on the 127.0.0.x
address examples/univ.es/README.md gives it, and postfleet runs a variant's
own postfleet.yaml. A message sent to relay.univ.es really arrives at the
server standing for smtp.depart1.univ.es; mail for the outside leaves
smtp.univ.es through its relayhost."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import yaml

from postfleet.core.testing.cluster import Cluster
from postfleet.core.testing.dns import DnsServer
from postfleet.core.testing.sink import SmtpSink

from .conftest import FAST_QMGR, eventually, send, start

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "univ.es"

# examples/univ.es/README.md, "Host names and loopback addresses".
ADDRESSES = {
    "relay.univ.es": "127.0.0.10",
    "smtp.univ.es": "127.0.0.11",
    "smtp.depart1.univ.es": "127.0.0.12",
    "depart1.univ.es": "127.0.0.12",
    "smtp.depart2.univ.es": "127.0.0.13",
    "depart2.univ.es": "127.0.0.13",
    "smtp.fund-univ.es": "127.0.0.14",
    "mx.pastorro.com": "127.0.0.20",
}
ZONE = {
    "domains": ["univ.es", "fund-univ.es", "pastorro.com"],
    "mx": {"pastorro.com": [(10, "mx.pastorro.com")]},
    "hosts": ADDRESSES,
}


@pytest.fixture
def sinks() -> Iterator[dict[str, SmtpSink]]:
    """One real SMTP server on port 25 of each host's loopback address."""
    started: dict[str, SmtpSink] = {}
    try:
        for name in ("relay.univ.es", "smtp.univ.es", "smtp.depart1.univ.es",
                     "smtp.depart2.univ.es", "mx.pastorro.com"):
            started[name] = SmtpSink(host=ADDRESSES[name], port=25).start()
        yield started
    finally:
        for sink in started.values():
            sink.stop()


def variant(name: str, tmp_path: Path, dns: DnsServer) -> tuple[dict[str, Any], dict[str, str]]:
    """The variant's own config, with only test plumbing changed: retries
    shortened, DNS pointed at the test's dnsmasq, mailboxes under tmp."""
    cfg = copy.deepcopy(yaml.safe_load((EXAMPLES / name / "postfleet.yaml").read_text()))
    cfg.setdefault("qmgr", {}).update(FAST_QMGR)
    # smtp.univ.es has disable_dns_lookups = yes: "native" lookups would ask
    # this machine's resolver, which tests must never do. DNS stays on, at
    # the test's dnsmasq, which gives the department domains A records and
    # no MX, so the same hosts are reached.
    cfg["disable_dns_lookups"] = False
    env = {
        "POSTFLEET_MYHOSTNAME": cfg["myhostname"],
        "POSTFLEET_DNS_NAMESERVERS": dns.nameserver,
        "POSTFLEET_LOCAL_MAIL_ROOT": str(tmp_path / "mail"),
        "POSTFLEET_LOCAL_USER_POLICY": "create",
    }
    return cfg, env


async def test_relay_univ_es_passes_mail_to_the_second_level_hosts(
        database_url: str, tmp_path: Path, make_dns: Callable[..., DnsServer],
        sinks: dict[str, SmtpSink], make_cluster: Callable[..., Cluster]) -> None:
    dns = make_dns(ZONE)
    cfg, env = variant("relay", tmp_path, dns)
    cluster = await start(make_cluster(database_url, cfg, **env))

    await send(cluster.smtp_port, "ana@univ.es", sender="x@pastorro.com")
    await send(cluster.smtp_port, "pepe@depart1.univ.es", sender="x@pastorro.com")
    await send(cluster.smtp_port, "luis@lab.depart2.univ.es", sender="x@pastorro.com")
    (to_smtp,) = await sinks["smtp.univ.es"].wait_for(1)
    (to_depart1,) = await sinks["smtp.depart1.univ.es"].wait_for(1)
    (to_depart2,) = await sinks["smtp.depart2.univ.es"].wait_for(1)
    assert to_smtp.recipients == ["ana@univ.es"]
    assert to_depart1.recipients == ["pepe@depart1.univ.es"]
    assert to_depart2.recipients == ["luis@lab.depart2.univ.es"]
    assert "by relay.univ.es (postfleet)" in to_depart1.message["Received"]
    # [host] routes: no MX was asked for the univ.es hosts.
    assert not [n for t, n in dns.queries() if t == "MX" and n.endswith("univ.es")]

    # The outside world by MX, for a client in mynetworks (127.0.0.1) ...
    await send(cluster.smtp_port, "jheras@pastorro.com", sender="ana@univ.es")
    (out,) = await sinks["mx.pastorro.com"].wait_for(1)
    assert out.recipients == ["jheras@pastorro.com"]
    # ... and never for a client outside it: the relay is not open.
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=cluster.smtp_port,
                                   source_address=("127.0.0.5", 0), timeout=30) as smtp:
            await smtp.sendmail("spam@elsewhere.test", ["victim@pastorro.com"],
                                b"Subject: x\r\n\r\nx\r\n")
    (code, text) = refused.value.recipients[0].code, refused.value.recipients[0].message
    assert (code, text) == (554, "5.7.1 <victim@pastorro.com>: Relay access denied")


async def test_smtp_univ_es_delivers_locally_and_relays_out_through_its_relayhost(
        database_url: str, tmp_path: Path, make_dns: Callable[..., DnsServer],
        sinks: dict[str, SmtpSink], make_cluster: Callable[..., Cluster]) -> None:
    dns = make_dns(ZONE)
    cfg, env = variant("smtp", tmp_path, dns)
    cluster = await start(make_cluster(database_url, cfg, **env))

    # Outside domains: relayhost = [$relay] = [relay.univ.es].
    await send(cluster.smtp_port, "jheras@pastorro.com", sender="rgarcia@univ.es")
    (out,) = await sinks["relay.univ.es"].wait_for(1)
    assert out.recipients == ["jheras@pastorro.com"]
    assert sinks["mx.pastorro.com"].messages == []
    # ".univ.es smtp:" keeps the recipient's domain as the next hop.
    await send(cluster.smtp_port, "pepe@depart1.univ.es", sender="rgarcia@univ.es")
    (dep,) = await sinks["smtp.depart1.univ.es"].wait_for(1)
    assert dep.recipients == ["pepe@depart1.univ.es"]
    # univ.es is local here: a Maildir delivery, fsynced into new/.
    await send(cluster.smtp_port, "rgarcia@univ.es", sender="jheras@pastorro.com",
               subject="local")
    maildir = tmp_path / "mail" / "rgarcia" / "Maildir" / "new"
    (path,) = await eventually(lambda: list(maildir.glob("*")) if maildir.exists() else [],
                               what="a Maildir file for rgarcia")
    assert b"Delivered-To: rgarcia@univ.es" in path.read_bytes()
    assert b"Subject: local" in path.read_bytes()


async def test_fund_univ_es_virtual_aliases_leave_for_the_outside(
        database_url: str, tmp_path: Path, make_dns: Callable[..., DnsServer],
        sinks: dict[str, SmtpSink], make_cluster: Callable[..., Cluster]) -> None:
    dns = make_dns(ZONE)
    cfg, env = variant("smtp-fund-virtual", tmp_path, dns)
    cluster = await start(make_cluster(database_url, cfg, **env))
    # The tutorial's virtual table: tesorero@fund-univ.es is jheras@pastorro.com.
    await send(cluster.smtp_port, "tesorero@fund-univ.es", sender="x@univ.es")
    (out,) = await sinks["relay.univ.es"].wait_for(1)
    assert out.recipients == ["jheras@pastorro.com"]
