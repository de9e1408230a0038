"""postfleet.core.mailauth against a real dnsmasq: DKIM keys and signatures,
SPF, DMARC (alignment, sp=, pct=), Authentication-Results and ARC."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest

from postfleet.core.mailauth import fields, inbound, keys, signing
from postfleet.core.mailauth.lookup import txt_function
from postfleet.core.nameservers import blocking_dns_client
from postfleet.core.testing.dns import DnsServer
from postfleet.core.testing.resolver_guard import SystemResolverGuard

RSA = keys.generate("rsa")
ED = keys.generate("ed25519")
MESSAGE = (b"From: Alice <alice@example.test>\r\nTo: bob@else.test\r\nSubject: hi\r\n"
           b"Date: Sun, 29 Nov 2026 00:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n\r\n"
           b"hello\r\n")


def txt(private: bytes) -> list[str]:
    return keys.txt_strings(keys.txt_value(private))


# -- keys (no DNS) ----------------------------------------------------------------------
def test_keys_records_and_the_key_directory(tmp_path: Path) -> None:
    assert keys.key_type(RSA) == "rsa" and keys.key_type(ED) == "ed25519"
    record = keys.dns_record("s1", "Example.Test.", RSA)
    assert record.startswith('s1._domainkey.example.test IN TXT "v=DKIM1; k=rsa; p=MIIB')
    assert all(len(part) <= 255 for part in txt(RSA)) and len(txt(RSA)) > 1
    assert keys.parse_name("s1._domainkey.example.test") == ("s1", "example.test")
    for other in ("..data", "s1._domainkey.example.test.txt", "key.pem"):
        assert keys.parse_name(other) is None
    with pytest.raises(keys.BadKey):
        keys.key_type(b"not a key")

    directory = keys.KeyDirectory(str(tmp_path))
    keys.write_key(tmp_path, "s1", "example.test", RSA)
    (tmp_path / "README").write_text("not a key")
    assert os.stat(tmp_path / "s1._domainkey.example.test").st_mode & 0o777 == 0o600
    [found] = directory.for_domain("mail.example.test")  # a parent's key signs
    assert (found.selector, found.domain, found.algorithm) == ("s1", "example.test",
                                                               "rsa-sha256")
    assert directory.for_domain("example.org") == []
    keys.write_key(tmp_path, "e1", "example.test", ED)  # read again once it changes
    assert sorted(k.algorithm for k in directory.for_domain("example.test")) == [
        "ed25519-sha256", "rsa-sha256"]


def test_signed_headers_over_sign_from() -> None:
    names = signing.signed_headers(MESSAGE + b"")
    assert names.count(b"from") == 2 and b"received" not in names
    assert set(names) == {b"from", b"to", b"subject", b"date", b"message-id"}


def test_authentication_results_of_ours_are_replaced_others_kept() -> None:
    text = (b"Authentication-Results: MX.Example.Test; dkim=pass\r\n"
            b"Authentication-Results: mx.example.test (forged);\r\n spf=pass\r\n"
            b"Authentication-Results: other.test; spf=fail\r\n") + MESSAGE
    kept = inbound.strip_ours(text, "mx.example.test")
    assert fields.values(kept, "authentication-results") == ["other.test; spf=fail"]
    header = inbound.authentication_results("mx.example.test", inbound.Verdicts(
        dmarc=inbound.DmarcResult("none", "example.test"), arc="none"))
    assert header == (b"Authentication-Results: mx.example.test;\r\n\tdmarc=none "
                      b"header.from=example.test;\r\n\tarc=none\r\n")


# -- against dnsmasq ----------------------------------------------------------------------
@pytest.fixture
def resolver(make_dns: Callable[..., DnsServer],
             no_system_resolver: SystemResolverGuard) -> inbound.Resolver:
    """dnsmasq's zone, and nothing asked of this machine's resolver."""
    dns = make_dns({
        "domains": ["example.test", "sub.example.test", "lists.test", "other.test"],
        "txt": {
            "s1._domainkey.example.test": txt(RSA),
            "e1._domainkey.example.test": txt(ED),
            "example.test": "v=spf1 ip4:127.0.0.1 ~all",
            "lists.test": "v=spf1 ip4:192.0.2.0/24 -all",
            "_dmarc.example.test": "v=DMARC1; p=reject; sp=quarantine; pct=50",
            "_dmarc.other.test": "v=DMARC1; p=none",
        },
    })
    return blocking_dns_client([dns.nameserver], 5)


@pytest.mark.slow
def test_dkim_signatures_verify_against_the_published_records(
        resolver: inbound.Resolver) -> None:
    signed = signing.sign(MESSAGE, [keys.DkimKey("example.test", "s1", RSA),
                                    keys.DkimKey("example.test", "e1", ED)])
    results = inbound.verify_dkim(resolver, signed)
    assert [(r.result, r.selector) for r in results] == [("pass", "s1"), ("pass", "e1")]
    assert dkim.verify(signed, dnsfunc=txt_function(resolver))
    tampered = inbound.verify_dkim(resolver, signed.replace(b"hello", b"hullo"))
    assert [r.result for r in tampered] == ["fail", "fail"]
    unknown = signing.sign(MESSAGE, [keys.DkimKey("example.test", "nokey", RSA)])
    [missing] = inbound.verify_dkim(resolver, unknown)
    assert missing.result == "permerror" and missing.domain == "example.test"
    # A DNS failure is temporary, never a failed signature (DMARC would reject).
    elsewhere = signing.sign(MESSAGE, [keys.DkimKey("nowhere.invalid", "s1", RSA)])
    assert [r.result for r in inbound.verify_dkim(resolver, elsewhere)] == ["temperror"]


@pytest.mark.slow
def test_spf_results_and_identities(resolver: inbound.Resolver) -> None:
    def check(ip: str, sender: str, helo: str = "client.test") -> tuple[str, str, str]:
        r = inbound.check_spf(resolver, ip=ip, sender=sender, helo=helo, receiver="mx.test")
        return r.result, r.identity, r.domain

    assert check("127.0.0.1", "a@example.test") == ("pass", "mailfrom", "example.test")
    assert check("127.0.0.2", "a@example.test") == ("softfail", "mailfrom", "example.test")
    assert check("127.0.0.1", "a@lists.test") == ("fail", "mailfrom", "lists.test")
    assert check("127.0.0.1", "a@other.test") == ("none", "mailfrom", "other.test")
    # The null sender: HELO's identity.
    assert check("192.0.2.7", "", helo="lists.test") == ("pass", "helo", "lists.test")
    # Outside the zone dnsmasq answers REFUSED: a temporary error.
    assert check("127.0.0.1", "a@nowhere.invalid")[0] == "temperror"


@pytest.mark.slow
def test_dmarc_alignment_subdomain_policy_and_pct(resolver: inbound.Resolver) -> None:
    def spf(result: str, domain: str) -> inbound.SpfResult:
        return inbound.SpfResult(result, "mailfrom", domain, f"x@{domain}", "client.test")

    def evaluate(from_domain: str, spf_result: inbound.SpfResult | None,
                 dkims: tuple[inbound.DkimResult, ...] = (),
                 sample: float = 0) -> inbound.DmarcResult:
        message = MESSAGE.replace(b"alice@example.test", f"alice@{from_domain}".encode())
        return inbound.evaluate_dmarc(resolver, message, spf_result, dkims, sample=sample)

    # Relaxed alignment: an SPF pass for the organizational domain aligns.
    assert evaluate("sub.example.test", spf("pass", "example.test")).result == "pass"
    passing = (inbound.DkimResult("pass", "example.test", "s1"),)
    assert evaluate("example.test", spf("fail", "lists.test"), passing).result == "pass"
    # Failing: p=reject for the domain; sp=quarantine for a subdomain (its
    # organizational domain's record); pct=50: outside the sample, one step down.
    failing = evaluate("example.test", spf("pass", "lists.test"))
    assert (failing.result, failing.policy, failing.disposition) == ("fail", "reject", "reject")
    outside = evaluate("example.test", spf("pass", "lists.test"), sample=75)
    assert (outside.disposition, outside.reason) == ("quarantine", "pct=50: not sampled")
    sub = evaluate("sub.example.test", None)
    assert (sub.result, sub.policy, sub.disposition) == ("fail", "quarantine", "quarantine")
    assert evaluate("other.test", None).disposition == "none"
    assert evaluate("lists.test", None).result == "none"  # no record
    assert evaluate("nowhere.invalid", None).result == "temperror"
    unsure = evaluate("example.test", spf("temperror", "example.test"))
    assert (unsure.result, unsure.disposition) == ("temperror", "none")


@pytest.mark.slow
def test_an_arc_seal_carries_our_results_and_verifies(resolver: inbound.Resolver) -> None:
    stamped = fields.prepend(MESSAGE, inbound.authentication_results(
        "mx.example.test", inbound.Verdicts(
            spf=inbound.SpfResult("pass", "mailfrom", "example.test", "a@example.test", "h"),
            arc="none")))
    sealed = signing.arc_seal(stamped, keys.DkimKey("example.test", "s1", RSA),
                              "mx.example.test")
    assert sealed is not None
    assert fields.values(sealed, "arc-authentication-results")[0].startswith(
        "i=1; mx.example.test;")
    assert inbound.verify_arc(resolver, sealed) == "pass"
    # Nothing of ours to seal: no chain.
    assert signing.arc_seal(MESSAGE, keys.DkimKey("example.test", "s1", RSA),
                            "mx.example.test") is None
