"""ingress-smtp: what smtpd keeps per client -- address (the socket's peer,
or the one a PROXY header names), verified name (Postfix's forward-confirmed
reverse lookup, peername.py), HELO, TLS state, error counters -- and per
transaction (``IngressEnvelope``): the DSN parameters (RET, ENVID, each
recipient's NOTIFY and ORCPT), the SMTPUTF8 request and the BDAT state.

Postfix parameters: smtpd_peername_lookup, smtpd_upstream_proxy_protocol.
"""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.proxy_protocol import AF, PROTO, V2_CMD, ProxyData
from aiosmtpd.smtp import Envelope, Session

from postfleet.core.milter.client import Milters
from postfleet.ingress_smtp.peername import UNKNOWN, NameLookup, system_client_name
from postfleet.ingress_smtp.restrictions import normalize_ip
from postfleet.ingress_smtp.transcript import Transcript

log = logging.getLogger(__name__)


class IngressSession(Session):
    """aiosmtpd's session plus what smtpd keeps per client."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, name_lookup: NameLookup = system_client_name
    ) -> None:
        super().__init__(loop)
        self.error_count = 0
        self.rcpt_overshoot = 0
        self.sasl_username = ""
        self.sasl_method = ""
        # reject_unauth_pipelining: the client sent commands ahead of time.
        self.pipelined = False
        # smtpd_client_restrictions' refusal at connect (smtpd_delay_reject = no).
        self.access_denied: object = None
        self.client_name = UNKNOWN  # verified reverse name, once looked up
        # The client a PROXY header named: (address, port); None = the socket's peer.
        self.proxied: tuple[str, int] | None = None
        self._name_lookup = name_lookup  # peername.py: system resolver or dns_nameservers
        # The address the client connected to (milters' {daemon_addr}).
        self.server_ip = ""
        # smtpd_milters' conversations for this connection (milters.py).
        self.milters: Milters | None = None
        # The conversation the postmaster may be sent (transcript.py).
        self.transcript = Transcript()
        self._lookup: asyncio.Task[str] | None = None

    @property
    def client_ip(self) -> str:
        if self.proxied is not None:
            return self.proxied[0]
        peer = self.peer
        if isinstance(peer, tuple) and peer:
            return normalize_ip(str(peer[0]))
        return ""

    @property
    def client_port(self) -> int:
        if self.proxied is not None:
            return self.proxied[1]
        peer = self.peer
        return int(peer[1]) if isinstance(peer, tuple) and len(peer) > 1 else 0

    def take_proxy(self, proxy: ProxyData) -> bool:
        """Use the client a (valid) PROXY header names; False refuses the connection.

        As Postfix's haproxy support: TCP over IPv4/IPv6 names the client; a v2
        LOCAL header (the proxy's own health check) keeps the socket's peer; v1
        UNKNOWN and every other family or transport are refused, since they
        would sidestep address-based access control (mynetworks).
        """
        if proxy.version == 2 and proxy.command == V2_CMD.LOCAL:
            return True
        if (proxy.protocol != PROTO.STREAM or proxy.family not in (AF.INET, AF.INET6)
                or proxy.src_addr is None):
            log.info("haproxy: unsupported PROXY v%s header (family %s, transport %s) from %s",
                     proxy.version, _name(AF, proxy.family), _name(PROTO, proxy.protocol),
                     self.describe())
            return False
        self.proxied = (normalize_ip(str(proxy.src_addr)), int(proxy.src_port or 0))
        return True

    def forget_helo(self) -> None:
        """RFC 3207 4.2: after STARTTLS the client starts over with EHLO."""
        self.host_name = None
        self.extended_smtp = False
        self.sasl_username = self.sasl_method = ""

    @property
    def helo(self) -> str:
        return str(self.host_name or "")

    @property
    def protocol(self) -> str:
        """The Received: "with" type (RFC 3848): SMTP, ESMTP, ESMTPS under TLS,
        ESMTPA/ESMTPSA once authenticated."""
        if not self.extended_smtp:
            return "SMTP"
        return ("ESMTP" + ("S" if self.ssl is not None else "")
                + ("A" if self.sasl_username else ""))

    def start_name_lookup(self, enabled: bool) -> None:
        """smtpd_peername_lookup: resolve the client's name while it talks."""
        if enabled and self.client_ip:
            self._lookup = asyncio.get_running_loop().create_task(
                self._name_lookup(self.client_ip), name="smtpd-peername"
            )

    async def resolved_name(self) -> str:
        """The client's name, waiting for the lookup if it is still running."""
        lookup = self._lookup
        if lookup is not None:
            try:
                self.client_name = await asyncio.shield(lookup)
            except asyncio.CancelledError:
                if not lookup.cancelled():
                    raise  # we are being cancelled, not the lookup
            self._lookup = None
        return self.client_name

    def cancel_lookup(self) -> None:
        if self._lookup is not None and not self._lookup.done():
            self._lookup.cancel()

    def describe(self) -> str:
        """Postfix's ``name[address]``."""
        return f"{self.client_name}[{self.client_ip}]"


class IngressEnvelope(Envelope):
    """aiosmtpd's envelope plus what Postfix's smtpd keeps per transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.ret = ""  # RFC 3461 RET: FULL, HDRS or "" (postfleet.core.smtp.dsn)
        self.envid = ""  # RFC 3461 ENVID, decoded
        # (NOTIFY, ORCPT) of each accepted recipient, in rcpt_tos order.
        self.dsn: list[tuple[str, str]] = []
        # RFC 3030 BDAT: a transfer under way (until LAST or RSET), its
        # chunks so far and their size, and whether an earlier chunk failed
        # (the rest are then read and discarded).
        self.bdat = False
        self.bdat_parts: list[bytes] = []
        self.bdat_size = 0
        self.bdat_error = False


def _name(kind: type[AF] | type[PROTO], value: int | None) -> str:
    if value is None:
        return "none"
    try:
        return kind(value).name
    except ValueError:
        return str(value)
