"""DNS for dkimpy and pyspf, through the resolver a role was configured with
(``dns_nameservers``, postfleet.core.nameservers) and never another.

Both libraries ask synchronously, so checks run in a worker thread with a
blocking dnspython resolver. dkimpy takes its TXT lookup as an argument
(``txt_function``). pyspf asks through a module-level function
(``spf.DNSLookup``); it is replaced once, here, by one that asks the resolver
of the check in progress (a context variable, set around each check), and
with none set it answers a temporary error rather than ask the system's
resolver.

Postfix parameters: none (postfleet's own: dns_nameservers).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import dkim
import dns.exception
import dns.resolver
import spf

Resolver = dns.resolver.Resolver
TxtFunction = Callable[..., bytes | None]

_SPF_RESOLVER: contextvars.ContextVar[Resolver | None] = contextvars.ContextVar(
    "postfleet_spf_resolver", default=None)


class TempFail(Exception):
    """The DNS could not answer now (timeout, SERVFAIL, no server)."""


def txt_records(resolver: Resolver, name: str, lifetime: float | None = None) -> list[str]:
    """Every TXT record at ``name``, each one's strings joined; [] when the
    name or the record does not exist; TempFail when DNS fails."""
    try:
        answer = resolver.resolve(name, "TXT", search=False, lifetime=lifetime)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout,
            dns.resolver.NoResolverConfiguration) as exc:
        raise TempFail(f"{name} TXT: {exc}") from None
    return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]


def txt_function(resolver: Resolver) -> TxtFunction:
    """dkimpy's ``dnsfunc``: the first TXT record at a name, as bytes."""

    def get_txt(name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode() if isinstance(name, bytes) else name
        try:
            records = txt_records(resolver, text.rstrip("."), timeout)
        except TempFail as exc:
            raise dkim.DnsTimeoutError(str(exc)) from None
        return records[0].encode() if records else None

    return get_txt


@contextmanager
def spf_resolver(resolver: Resolver) -> Iterator[None]:
    """pyspf asks ``resolver`` for the checks made inside."""
    token = _SPF_RESOLVER.set(resolver)
    try:
        yield
    finally:
        _SPF_RESOLVER.reset(token)


def _spf_lookup(name: str, qtype: str, strict: Any = True,
                timeout: float = 20) -> list[tuple[tuple[str, str], Any]]:
    """pyspf's DNSLookup contract: [((name, type), value), ...]."""
    resolver = _SPF_RESOLVER.get()
    if resolver is None:
        raise spf.TempError("DNS: no resolver configured for this check")
    try:
        answers = resolver.resolve(name, qtype, search=False, lifetime=timeout)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as exc:
        raise spf.TempError(f"DNS {exc}") from None
    out: list[tuple[tuple[str, str], Any]] = []
    for rdata in answers:
        value: Any
        if qtype in ("A", "AAAA"):
            value = rdata.address
        elif qtype == "MX":
            value = (rdata.preference, rdata.exchange)
        elif qtype == "PTR":
            value = rdata.target.to_text(True)
        elif qtype in ("TXT", "SPF"):
            value = rdata.strings
        else:
            continue
        out.append(((name, qtype), value))
    return out


spf.DNSLookup = _spf_lookup
