"""Inbound mail authentication: SPF (pyspf), DKIM verification and the ARC
chain (dkimpy), DMARC evaluation (the ``dmarc`` library: record syntax,
alignment; the organizational domain from publicsuffixlist's bundled Public
Suffix List), and the RFC 8601 Authentication-Results header (authres).

SPF (RFC 7208) checks the MAIL FROM identity, or HELO's for the null sender,
and gives the Received-SPF field as pyspf writes it (the one
postfix-policyd-spf-python adds). DKIM verifies every signature (RFC 6376;
RSA keys of at least 1024 bits, Ed25519). DMARC (RFC 7489) takes the one
author domain of From:, its ``_dmarc`` record or else its organizational
domain's (``sp=`` then applies), and passes when an SPF or DKIM pass is
aligned with it (relaxed or strict, ``aspf``/``adkim``); a failing message
gets the policy's disposition, lowered one step (reject -> quarantine ->
none) for the messages outside ``pct`` (RFC 7489 6.6.4).

Authentication-Results carries the authserv-id (myhostname); fields already
in the message that claim that id are forged or stale and are removed first
(RFC 8601 5), whatever their case.

Postfix parameters: none (the policy settings are read by ingress-smtp).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import authres
import authres.arc
import authres.dmarc
import dkim
import dmarc as dmarclib
import spf
from authres.core import AuthenticationResultProperty
from publicsuffixlist import PublicSuffixList

from postfleet.core.mailauth import fields
from postfleet.core.mailauth.lookup import (
    Resolver,
    TempFail,
    spf_resolver,
    txt_function,
    txt_records,
)

SPF_TIMEOUT = 20.0  # RFC 7208 4.6.4 suggests at least 20 s for the whole check
DKIM_TIMEOUT = 5.0
AUTHENTICATION_RESULTS = "authentication-results"


@dataclass(frozen=True)
class SpfResult:
    result: str  # pass fail softfail neutral none temperror permerror
    identity: str  # mailfrom | helo
    domain: str  # the domain checked: MAIL FROM's, or HELO's for <>
    sender: str
    helo: str
    explanation: str = ""
    received_spf: str = ""  # the Received-SPF field's value


@dataclass(frozen=True)
class DkimResult:
    result: str  # pass fail neutral temperror permerror
    domain: str = ""
    selector: str = ""
    b: str = ""  # the first characters of b=, telling signatures apart (RFC 6008)
    reason: str = ""


@dataclass(frozen=True)
class DmarcResult:
    result: str  # pass fail none temperror permerror
    domain: str = ""  # the From: domain
    policy: str = ""  # the published policy that applied: none quarantine reject
    disposition: str = "none"  # what to do: none quarantine reject (after pct)
    reason: str = ""


@dataclass(frozen=True)
class Verdicts:
    spf: SpfResult | None = None
    dkim: tuple[DkimResult, ...] = ()
    dmarc: DmarcResult | None = None
    arc: str = ""  # the incoming ARC chain: none pass fail ("" not checked)


# -- SPF ---------------------------------------------------------------------------------
def check_spf(resolver: Resolver, *, ip: str, sender: str, helo: str, receiver: str,
              timeout: float = SPF_TIMEOUT) -> SpfResult:
    """The SPF result for this client (blocking: run it in a thread)."""
    with spf_resolver(resolver):
        query = spf.query(i=ip, s=sender, h=helo, receiver=receiver, querytime=timeout)
        result, _code, explanation = query.check()
        header = query.get_header(result, receiver)
    identity = "helo" if not sender else "mailfrom"
    domain = (sender.rpartition("@")[2] if sender else helo).lower().rstrip(".")
    return SpfResult(result, identity, domain, sender, helo, explanation, header)


# -- DKIM and ARC ----------------------------------------------------------------------
def verify_dkim(resolver: Resolver, message: bytes,
                timeout: float = DKIM_TIMEOUT) -> tuple[DkimResult, ...]:
    """One result per DKIM-Signature, top to bottom (blocking)."""
    count = len(fields.values(message, "dkim-signature"))
    if not count:
        return ()
    lookup = txt_function(resolver)
    # dkimpy reports a key it could not get as a failed signature; what the
    # DNS said tells a temporary error and a missing key apart from a bad one.
    asked: list[str] = []

    def get_txt(name: bytes | str, timeout: float = 5) -> bytes | None:
        try:
            found = lookup(name, timeout=timeout)
        except dkim.DnsTimeoutError:
            asked.append("temperror")
            raise
        if found is None:
            asked.append("permerror")
        return found

    verifier = dkim.DKIM(message, minkey=1024, timeout=timeout)
    out: list[DkimResult] = []
    for index in range(count):
        verifier.domain = verifier.selector = None
        verifier.signature_fields = {}
        asked.clear()
        try:
            ok = verifier.verify(idx=index, dnsfunc=get_txt)
            result, reason = ("pass", "") if ok else ("fail", "signature verification failed")
            if not ok and asked:
                result = asked[-1]
                reason = ("key lookup failed" if result == "temperror"
                          else "no key for the signature")
        except dkim.DnsTimeoutError as exc:
            result, reason = "temperror", str(exc)
        except dkim.ValidationError as exc:
            # The body hash mismatch is a signature that does not verify.
            mismatch = "body hash mismatch" in str(exc)
            result, reason = ("fail" if mismatch else "permerror"), str(exc)
        except dkim.DKIMException as exc:
            result, reason = "permerror", str(exc)
        sig = verifier.signature_fields or {}
        out.append(DkimResult(result, _text(sig.get(b"d")).lower(), _text(sig.get(b"s")),
                              _text(sig.get(b"b")).replace(" ", "")[:8], reason))
    return tuple(out)


def verify_arc(resolver: Resolver, message: bytes) -> str:
    """The incoming ARC chain's state: none, pass or fail (blocking)."""
    if not fields.values(message, "arc-seal"):
        return "none"
    cv, _results, _reason = dkim.arc_verify(message, dnsfunc=txt_function(resolver))
    return _text(cv).lower() or "fail"


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return "" if value is None else str(value)


# -- DMARC -----------------------------------------------------------------------------
@functools.cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()  # the list the package ships: no download


def organizational_domain(domain: str) -> str:
    return _psl().privatesuffix(domain) or domain


class _OrgDomains:
    """The dmarc library's public-suffix interface on publicsuffixlist."""

    def get_public_suffix(self, domain: str) -> str:
        return organizational_domain(domain)


def _dmarc_record(resolver: Resolver, domain: str) -> list[str]:
    return [r for r in txt_records(resolver, f"_dmarc.{domain}")
            if r.strip().lower().startswith("v=dmarc1")]


def evaluate_dmarc(resolver: Resolver, message: bytes, spf_result: SpfResult | None,
                   dkim_results: Sequence[DkimResult], *,
                   sample: float | None = None) -> DmarcResult:
    """DMARC for the message's From: domain (blocking). ``sample`` in [0, 100)
    picks the pct= sampling (random when None)."""
    domain = fields.from_domain(message)
    if domain is None:
        return DmarcResult("none", reason="no single author domain in From:")
    org = organizational_domain(domain)
    try:
        records = _dmarc_record(resolver, domain)
        used_org = False
        if not records and org != domain:
            records, used_org = _dmarc_record(resolver, org), True
    except TempFail as exc:
        return DmarcResult("temperror", domain, reason=str(exc))
    if len(records) != 1:
        why = "no DMARC record" if not records else "more than one DMARC record"
        return DmarcResult("none", domain, reason=why)
    try:
        policy = dmarclib.DMARC(publicsuffix=_OrgDomains()).parse_record(
            records[0], domain, org if used_org else None)
    except dmarclib.Error as exc:
        return DmarcResult("permerror", domain, reason=str(exc))
    results = dmarclib.AuthResults(
        spf=(dmarclib.SPF(spf_result.domain, dmarclib.SPFResult(spf_result.result))
             if spf_result is not None and spf_result.domain else None),
        dkim=[dmarclib.DKIM(d.domain, dmarclib.DKIMResult(d.result))
              for d in dkim_results if d.domain] or None,
    )
    evaluated = dmarclib.DMARC(publicsuffix=_OrgDomains()).get_result(
        policy, auth_results=results)
    applied = policy.p
    if used_org and policy.sp is not dmarclib.DMARCDisposition.UNSPECIFIED:
        applied = policy.sp
    published = applied.value or "none"
    if evaluated.result is dmarclib.DMARCResult.PASS:
        return DmarcResult("pass", domain, published, "none")
    temporary = [r for r in (spf_result, *dkim_results)
                 if r is not None and r.result == "temperror"]
    if temporary:  # it might have passed: never refuse on a DNS hiccup
        return DmarcResult("temperror", domain, published, "none",
                           reason="an SPF or DKIM check failed temporarily")
    pct = policy.pct if 0 <= policy.pct <= 100 else 100
    drawn = random.uniform(0, 100) if sample is None else sample
    disposition = published
    if drawn >= pct:  # not sampled: the next policy down (RFC 7489 6.6.4)
        disposition = {"reject": "quarantine", "quarantine": "none"}.get(published, "none")
    return DmarcResult("fail", domain, published, disposition,
                       reason="" if disposition == published else f"pct={pct}: not sampled")


# -- Authentication-Results --------------------------------------------------------------
def authentication_results(authserv_id: str, verdicts: Verdicts) -> bytes:
    """The Authentication-Results field (RFC 8601), folded, with CRLF."""
    results: list[Any] = []
    if verdicts.spf is not None:
        s = verdicts.spf
        if s.identity == "helo":
            results.append(authres.SPFAuthenticationResult(result=s.result, smtp_helo=s.helo))
        else:
            results.append(authres.SPFAuthenticationResult(result=s.result,
                                                            smtp_mailfrom=s.sender))
    for d in verdicts.dkim:
        props = [AuthenticationResultProperty("header", "b", d.b)] if d.b else None
        results.append(authres.DKIMAuthenticationResult(
            result=d.result, reason=d.reason or None, header_d=d.domain or None,
            header_s=d.selector or None, properties=props))
    if verdicts.dmarc is not None:
        m = verdicts.dmarc
        results.append(authres.dmarc.DMARCAuthenticationResult(
            result=m.result, header_from=m.domain or None,
            policy=m.policy or None, reason=m.reason or None))
    if verdicts.arc:
        results.append(authres.arc.ARCAuthenticationResult(result=verdicts.arc))
    header = authres.AuthenticationResultsHeader(authserv_id=authserv_id,
                                                 results=results or None)
    return _fold(str(header)).encode("utf-8") + b"\r\n"


def _fold(text: str) -> str:
    """One result per line (RFC 5322 folding at the ``;`` separators)."""
    return text.replace("; ", ";\r\n\t")


def authserv_id_of(field_value: str) -> str:
    """The authserv-id an Authentication-Results value starts with."""
    head = field_value.split(";", 1)[0]
    head = head.split("(", 1)[0]  # a comment may follow the id
    return head.strip().split()[0].lower() if head.strip() else ""


def strip_ours(message: bytes, authserv_id: str) -> bytes:
    """The message without Authentication-Results fields claiming our id."""
    ours = authserv_id.lower()

    def claims_ours(f: bytes) -> bool:
        return (fields.name(f) == AUTHENTICATION_RESULTS
                and authserv_id_of(fields.value(f)) == ours)

    return fields.without(message, claims_ours)
