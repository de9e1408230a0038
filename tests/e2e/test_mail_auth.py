"""Mail authentication end to end: an SMTP client in, every role a real
process, a real sink out; signatures are checked by dkimpy against the TXT
records a real dnsmasq serves.

- cleanup signs mail from mynetworks with the keys `postfleet dkim keygen`
  made (RSA and Ed25519);
- ingress-smtp checks inbound mail (SPF, DKIM, DMARC), stamps
  Authentication-Results, refuses a broken signature under p=reject and
  holds a failure under p=quarantine;
- smtpd_milters: a real OpenDKIM signs through the milter protocol; a milter
  that never answers follows milter_default_action.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import dkim
import pytest
from sqlalchemy import select

from postfleet.core.db.engine import create_engine
from postfleet.core.db.models import Message
from postfleet.core.db.status import MessageState
from postfleet.core.mailauth import inbound, keys
from postfleet.core.mailauth.lookup import txt_function
from postfleet.core.milter import wire
from postfleet.core.nameservers import blocking_dns_client
from postfleet.core.testing.cluster import Cluster
from postfleet.core.testing.dns import DnsServer
from postfleet.core.testing.milters import MilterScript, scripted_milter
from postfleet.core.testing.opendkim import OpenDkim
from postfleet.core.testing.ports import free_port
from postfleet.core.testing.sink import SmtpSink

from .conftest import FAST_QMGR, start

# The queue store plays no part here: SQLite only.
pytestmark = [pytest.mark.slow, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

MYHOSTNAME = "mx.postfleet.test"


def message(sender: str, to: str, subject: str = "auth", extra: str = "") -> bytes:
    return (f"From: Alice <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Date: Sun, 29 Nov 2026 00:00:00 +0000\r\nMessage-ID: <{subject}@test>\r\n"
            f"{extra}\r\nhello\r\n").encode()


async def submit(port: int, sender: str, to: str, data: bytes) -> tuple[int, str]:
    """MAIL/RCPT/DATA; the first refusal's (code, text), or the 250 after DATA."""
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60,
                          local_hostname="client.test")
    await smtp.connect()
    try:
        await smtp.ehlo()
        for step in (lambda: smtp.mail(sender), lambda: smtp.rcpt(to)):
            reply = await step()
            if reply.code >= 400:
                return reply.code, reply.message
        reply = await smtp.data(data)
        return reply.code, reply.message
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code, exc.message
    finally:
        with contextlib.suppress(Exception):
            await smtp.quit()


async def message_state(url: str, queue_id: str) -> str:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return str((await conn.execute(
                select(Message.state).where(Message.queue_id == queue_id))).scalar_one())
    finally:
        await engine.dispose()


def txt(private: bytes) -> list[str]:
    return keys.txt_strings(keys.txt_value(private))


def config(sink: SmtpSink, mynetworks: list[str], **sections: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "myhostname": MYHOSTNAME, "qmgr": dict(FAST_QMGR),
        "routing": {"relay_domains": ["example.test"],
                    "transport_maps": {"example.test": f"smtp:{sink.nexthop}"},
                    "mynetworks": mynetworks}}
    cfg.update(sections)
    return cfg


def listeners(*entries: tuple[str, int, dict[str, Any]]) -> str:
    return json.dumps([{"name": name, "address": "127.0.0.1", "port": port,
                        "overrides": overrides} for name, port, overrides in entries])


async def test_mail_from_mynetworks_leaves_signed_with_the_keys_dkim_keygen_made(
        database_url: str, tmp_path: Path, smtp_sink: SmtpSink, make_dns: Callable[..., DnsServer],
        make_cluster: Callable[..., Cluster]) -> None:
    key_dir = tmp_path / "dkim"
    for selector, kind in (("s1", "rsa"), ("e1", "ed25519")):
        made = subprocess.run(
            [sys.executable, "-m", "postfleet.cli", "dkim", "keygen", "--domain", "example.org",
             "--selector", selector, "--out", str(key_dir), "--type", kind],
            capture_output=True, text=True, check=True)
        assert f'{selector}._domainkey.example.org IN TXT "v=DKIM1; k={kind}; p=' in made.stdout
    records = {f"{s}._domainkey.example.org": txt((key_dir / f"{s}._domainkey.example.org")
                                                   .read_bytes()) for s in ("s1", "e1")}
    dns = make_dns({"domains": ["example.org"], "txt": records})
    cluster = await start(make_cluster(
        database_url,
        config(smtp_sink, ["127.0.0.0/8"], cleanup={"dkim_key_directory": str(key_dir)})))

    code, text = await submit(cluster.smtp_port, "alice@example.org", "bob@example.test",
                              message("alice@example.org", "bob@example.test"))
    assert code == 250, text
    (received,) = await smtp_sink.wait_for(1)
    resolver = blocking_dns_client([dns.nameserver], 5)
    verdicts = await asyncio.to_thread(inbound.verify_dkim, resolver, received.data)
    assert sorted((v.result, v.domain, v.selector) for v in verdicts) == [
        ("pass", "example.org", "e1"), ("pass", "example.org", "s1")]
    signatures = [v for k, v in received.message.items() if k.lower() == "dkim-signature"]
    assert any("a=ed25519-sha256" in s for s in signatures)
    assert all("c=relaxed/relaxed" in s for s in signatures)
    # From is signed twice (over-signed): a From added on the way breaks it.
    assert all(s.replace(" ", "").replace("\r\n", "").count("from") >= 2 for s in signatures)
    # dkimpy's own verify, against dnsmasq's record.
    assert dkim.verify(received.data, dnsfunc=txt_function(resolver))


@pytest.fixture
def auth_zone(make_dns: Callable[..., DnsServer]) -> tuple[DnsServer, bytes]:
    private = keys.generate("rsa")
    dns = make_dns({
        "domains": ["sender.test", "lists.test", "spf-fail.test", "quarantine.test"],
        "txt": {
            "sender.test": "v=spf1 ip4:127.0.0.1 -all",
            "_dmarc.sender.test": "v=DMARC1; p=reject; pct=100",
            "s1._domainkey.sender.test": txt(private),
            "lists.test": "v=spf1 -all",
            "spf-fail.test": "v=spf1 -all",
            "_dmarc.quarantine.test": "v=DMARC1; p=quarantine",
        }})
    return dns, private


async def test_inbound_mail_is_checked_stamped_and_refused_under_p_reject(
        database_url: str, smtp_sink: SmtpSink, auth_zone: tuple[DnsServer, bytes],
        make_cluster: Callable[..., Cluster]) -> None:
    dns, private = auth_zone
    strict = free_port()
    ingress = {"smtpd_authentication_checks": True, "smtpd_dmarc_reject_failures": True}
    cluster = make_cluster(
        database_url,
        config(smtp_sink, ["10.255.255.0/24"], ingress_smtp=ingress),
        POSTFLEET_DNS_NAMESERVERS=dns.nameserver)
    cluster.role_env("ingress-smtp")["POSTFLEET_LISTENERS"] = listeners(
        ("smtp", cluster.smtp_port, {}),
        ("strict", strict, {"smtpd_spf_reject_fail": True}))
    await start(cluster)
    key = keys.DkimKey("sender.test", "s1", private)
    from postfleet.core.mailauth import signing

    # A good one: SPF and DKIM pass, aligned; a forged A-R claiming our name goes.
    forged = f"Authentication-Results: {MYHOSTNAME.upper()}; dkim=pass header.d=sender.test\r\n"
    good = signing.sign(message("alice@sender.test", "bob@example.test", "good", forged), [key])
    code, text = await submit(cluster.smtp_port, "alice@sender.test", "bob@example.test", good)
    assert code == 250, text
    (received,) = await smtp_sink.wait_for(1)
    results = [v for k, v in received.message.items() if k.lower() == "authentication-results"]
    assert len(results) == 1, results
    stamped = " ".join(results[0].split())
    assert stamped.startswith(f"{MYHOSTNAME}; spf=pass smtp.mailfrom=alice@sender.test;")
    assert "dkim=pass header.b=" in stamped and "header.d=sender.test header.s=s1" in stamped
    assert "dmarc=pass header.from=sender.test" in stamped
    assert received.header("Received-SPF").startswith("Pass ")

    # A broken signature, and SPF that cannot align: DMARC fails, p=reject.
    broken = signing.sign(message("alice@sender.test", "bob@example.test", "bad"), [key])
    broken = broken.replace(b"hello", b"h3llo")
    code, text = await submit(cluster.smtp_port, "bounces@lists.test", "bob@example.test",
                              broken)
    assert (code, text) == (550, "5.7.1 rejected by DMARC policy for sender.test")

    # p=quarantine: accepted, and held (Postfix's hold queue, as OpenDMARC does it).
    held = message("dave@quarantine.test", "bob@example.test", "held")
    code, text = await submit(cluster.smtp_port, "bounces@lists.test", "bob@example.test",
                              held)
    assert code == 250, text
    queue_id = text.rsplit(" ", 1)[1]
    assert await message_state(database_url, queue_id) == MessageState.HOLD

    # SPF -all: tagged on one listener, refused at RCPT on the other.
    plain = message("carol@spf-fail.test", "bob@example.test", "spf")
    code, text = await submit(strict, "carol@spf-fail.test", "bob@example.test", plain)
    assert code == 550 and text.startswith("5.7.23 <bob@example.test>: Recipient address "
                                           "rejected: Message rejected due to: SPF fail"), text
    code, text = await submit(cluster.smtp_port, "carol@spf-fail.test", "bob@example.test",
                              plain)
    assert code == 250, text
    tagged = (await smtp_sink.wait_for(2))[1]
    stamped = " ".join(tagged.message["Authentication-Results"].split())
    assert stamped.startswith(f"{MYHOSTNAME}; spf=fail smtp.mailfrom=carol@spf-fail.test;")
    assert "dmarc=none" in stamped
    assert len(smtp_sink.messages) == 2


async def test_opendkim_signs_through_the_milter_protocol(
        database_url: str, smtp_sink: SmtpSink, make_opendkim: Callable[..., OpenDkim],
        make_dns: Callable[..., DnsServer], make_cluster: Callable[..., Cluster]) -> None:
    """smtpd_milters for SMTP clients, non_smtpd_milters for `postfleet sendmail`."""
    milter = make_opendkim("example.org", "m1")
    dns = make_dns({"domains": ["example.org"],
                    "txt": {"m1._domainkey.example.org": txt(milter.private_key)}})
    cluster = await start(make_cluster(
        database_url, config(smtp_sink, ["127.0.0.0/8"], smtpd_milters=milter.socket,
                             non_smtpd_milters=milter.socket)))
    code, text = await submit(cluster.smtp_port, "alice@example.org", "bob@example.test",
                              message("alice@example.org", "bob@example.test", "milter"))
    assert code == 250, text
    env = {**cluster.role_env("cleanup"), "POSTFLEET_CLEANUP_ADDRESS":
           f"127.0.0.1:{cluster.cleanup_port}"}
    sent = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "postfleet.cli", "sendmail", "-f",
                         "alice@example.org", "bob@example.test"],
        input=message("alice@example.org", "bob@example.test", "local"), env=env,
        capture_output=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    received = await smtp_sink.wait_for(2)
    resolver = blocking_dns_client([dns.nameserver], 5)
    for got in received:
        assert got.header("DKIM-Signature") is not None, got.data[:600]
        verdicts = await asyncio.to_thread(inbound.verify_dkim, resolver, got.data)
        assert [(v.result, v.domain, v.selector) for v in verdicts] == [
            ("pass", "example.org", "m1")], milter.log()
    assert sorted(str(m.header("Subject")) for m in received) == ["local", "milter"]


async def test_a_milter_that_times_out_follows_milter_default_action(
        database_url: str, smtp_sink: SmtpSink,
        make_cluster: Callable[..., Cluster]) -> None:
    # A milter that lets every command through and never answers the end of
    # the message (a hung content scanner).
    async with scripted_milter(MilterScript(silent=frozenset({wire.SMFIC_BODYEOB}))) as name:
        lenient = free_port()
        cluster = make_cluster(
            database_url,
            config(smtp_sink, ["127.0.0.0/8"], smtpd_milters=name,
                   milter_content_timeout="2s"))
        cluster.role_env("ingress-smtp")["POSTFLEET_LISTENERS"] = listeners(
            ("smtp", cluster.smtp_port, {}),
            ("lenient", lenient, {"milter_default_action": "accept"}))
        await start(cluster)
        data = message("alice@example.org", "bob@example.test", "hung")
        # Postfix's default, tempfail: 451 4.7.1 and nothing queued.
        code, text = await submit(cluster.smtp_port, "alice@example.org", "bob@example.test",
                                  data)
        assert (code, text) == (451, "4.7.1 Service unavailable - try again later")
        # accept: as if the milter were not there.
        code, text = await submit(lenient, "alice@example.org", "bob@example.test", data)
        assert code == 250, text
        (received,) = await smtp_sink.wait_for(1)
        assert received.header("Subject") == "hung"
        assert "milter inet:127.0.0.1" in cluster.roles["ingress-smtp"].log()
