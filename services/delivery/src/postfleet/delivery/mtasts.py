"""MTA-STS (RFC 8461) for the smtp client: a recipient domain's published
policy, found and cached, turned into a TLS policy for its MX hosts.

Postfix has no MTA-STS of its own: sites add an external policy server
(postfix-mta-sts-resolver) to smtp_tls_policy_maps, which answers ``secure
match=<mx patterns>`` for domains in enforce mode. This is that, in-process,
consulted after smtp_tls_policy_maps and before smtp_tls_security_level, and
only for a next hop that is a domain found by MX lookup (never ``[host]``).

1. ``_mta-sts.<domain>`` TXT through the smtp client's own resolver
   (dns_nameservers): exactly one ``v=STSv1; id=…`` record, else no policy.
2. When no policy with that id is cached: GET
   ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` with httpx. The
   policy host's address comes from the same resolver (the request goes to
   that address, with the host name as SNI, Host header and the name the
   certificate is checked against), the certificate must verify against
   smtp_tls_CAfile (or the system's CAs), redirects are not followed, only
   ``200`` with ``text/plain`` of at most 64 KiB counts, all within
   smtp_mta_sts_timeout.
3. The policy (``version: STSv1``, ``mode``, ``max_age``, ``mx`` lines) is
   cached for max_age seconds (at most smtp_mta_sts_cache_size domains). A
   TXT record gone or unreachable, or a fetch that fails, keeps using an
   unexpired cached policy (RFC 8461 5.1); with nothing cached there is no
   policy.

``enforce``: the MX hosts the policy does not list are skipped, and TLS is
required with a certificate that verifies and names the MX host; either
failure defers the mail (4.7.5) instead of sending it unprotected.
``testing`` and ``none`` change nothing (no TLSRPT reports are sent).

Postfix parameters: smtp_tls_CAfile. postfleet's own: smtp_mta_sts_enable,
smtp_mta_sts_timeout, smtp_mta_sts_cache_size, and (through the resolver)
dns_nameservers, dns_timeout.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass

import httpx

from postfleet.delivery.hostlookup import DnsResolver, ResolveError

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
MAX_AGE_LIMIT = 31557600
WELL_KNOWN = "/.well-known/mta-sts.txt"
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
MODES = ("enforce", "testing", "none")


class PolicyFetchError(Exception):
    """No usable policy could be fetched (the reason is logged)."""


@dataclass(frozen=True, slots=True)
class StsPolicy:
    domain: str
    policy_id: str
    mode: str
    max_age: int
    mx: tuple[str, ...]
    expires: float  # time.monotonic() deadline


def parse_txt(text: str) -> str | None:
    """The id of an STSv1 TXT record (its strings joined), or None."""
    fields: dict[str, str] = {}
    for part in text.split(";"):
        name, eq, value = part.strip().partition("=")
        if eq:
            fields.setdefault(name.strip(), value.strip())
    if fields.get("v") != "STSv1":
        return None
    policy_id = fields.get("id", "")
    return policy_id if _ID.match(policy_id) else None


def parse_policy(text: str) -> tuple[str, int, tuple[str, ...]]:
    """(mode, max_age, mx patterns) of a policy body; ValueError when invalid."""
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        name, colon, value = line.partition(":")
        if colon:
            fields.setdefault(name.strip(), []).append(value.strip())
    if fields.get("version") != ["STSv1"]:
        raise ValueError("not an STSv1 policy")
    mode = (fields.get("mode") or [""])[0]
    if mode not in MODES:
        raise ValueError(f"bad mode {mode!r}")
    age_text = (fields.get("max_age") or [""])[0]
    if not age_text.isdigit() or len(age_text) > 10:
        raise ValueError(f"bad max_age {age_text!r}")
    mx = tuple(m.lower().rstrip(".") for m in fields.get("mx", []) if m)
    if mode != "none" and not mx:
        raise ValueError("no mx patterns")
    return mode, min(int(age_text), MAX_AGE_LIMIT), mx


class MtaSts:
    """Policies by domain: looked up, fetched and cached."""

    def __init__(
        self, resolver: DnsResolver, client: httpx.AsyncClient, *, timeout: float,
        cache_size: int = 10000,
    ) -> None:
        self.resolver = resolver
        self.client = client
        self.timeout = timeout
        self.cache_size = cache_size
        self._cache: OrderedDict[str, StsPolicy] = OrderedDict()
        self._fetching: dict[str, asyncio.Future[StsPolicy | None]] = {}

    async def close(self) -> None:
        await self.client.aclose()

    def cached(self, domain: str) -> StsPolicy | None:
        policy = self._cache.get(domain)
        if policy is None:
            return None
        if policy.expires <= time.monotonic():
            del self._cache[domain]
            return None
        self._cache.move_to_end(domain)
        return policy

    async def enforced_mx(self, domain: str) -> tuple[str, ...] | None:
        """The MX patterns of the domain's policy when it is in enforce mode."""
        policy = await self.policy(domain)
        if policy is None or policy.mode != "enforce":
            return None
        return policy.mx

    async def policy(self, domain: str) -> StsPolicy | None:
        domain = domain.lower().rstrip(".")
        cached = self.cached(domain)
        try:
            records = await self.resolver.txt(f"_mta-sts.{domain}")
        except ResolveError:
            return cached  # DNS trouble: an unexpired policy still holds
        stsv1 = [r for r in records if r.startswith("v=STSv1")]
        policy_id = parse_txt(stsv1[0]) if len(stsv1) == 1 else None
        if policy_id is None:
            return cached  # none, several or malformed: no (new) policy
        if cached is not None and cached.policy_id == policy_id:
            return cached
        # One fetch per domain at a time; concurrent deliveries share it.
        pending = self._fetching.get(domain)
        if pending is None:
            pending = asyncio.ensure_future(self._refresh(domain, policy_id, cached))
            self._fetching[domain] = pending
            pending.add_done_callback(lambda _f: self._fetching.pop(domain, None))
        return await asyncio.shield(pending)

    async def _refresh(self, domain: str, policy_id: str,
                       cached: StsPolicy | None) -> StsPolicy | None:
        try:
            async with asyncio.timeout(self.timeout):
                text = await self._fetch(domain)
            mode, max_age, mx = parse_policy(text)
        except (PolicyFetchError, ValueError, TimeoutError) as exc:
            log.warning("MTA-STS policy of %s not fetched: %s", domain, exc or "timed out")
            return cached
        policy = StsPolicy(domain, policy_id, mode, max_age, mx, time.monotonic() + max_age)
        self._cache[domain] = policy
        self._cache.move_to_end(domain)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        log.info("MTA-STS policy of %s: mode %s, max_age %d, mx %s", domain, mode, max_age,
                 ", ".join(mx))
        return policy

    async def _fetch(self, domain: str) -> str:
        host = f"mta-sts.{domain}"
        try:
            addresses = await self.resolver.host_addresses(host, 443)
        except ResolveError as exc:
            raise PolicyFetchError(exc.text) from None
        failure: Exception | None = None
        for address in addresses:
            ip = f"[{address.ip}]" if ":" in address.ip else address.ip
            try:
                async with self.client.stream(
                    "GET", f"https://{ip}{WELL_KNOWN}", headers={"Host": host},
                    extensions={"sni_hostname": host},
                ) as resp:
                    return await _body(resp, host)
            except httpx.HTTPError as exc:
                failure = exc
        raise PolicyFetchError(f"https://{host}{WELL_KNOWN}: {failure!r}")


async def _body(resp: httpx.Response, host: str) -> str:
    if resp.status_code != 200:
        raise PolicyFetchError(f"https://{host}{WELL_KNOWN}: HTTP {resp.status_code}")
    media = resp.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "text/plain":
        raise PolicyFetchError(f"https://{host}{WELL_KNOWN}: content type {media!r}")
    body = bytearray()
    async for chunk in resp.aiter_bytes():
        body += chunk
        if len(body) > MAX_BODY:
            raise PolicyFetchError(f"https://{host}{WELL_KNOWN}: larger than 64 KiB")
    return body.decode("utf-8", "replace")


def http_client(verify: ssl.SSLContext, timeout: float) -> httpx.AsyncClient:
    """The kept HTTP client for policy fetches: no redirects, no proxies from
    the environment, and no connection reuse (each fetch goes to an address
    for one host name, which a pooled connection must not serve another)."""
    return httpx.AsyncClient(
        verify=verify, timeout=timeout, follow_redirects=False, trust_env=False,
        limits=httpx.Limits(max_keepalive_connections=0),
    )
