"""Client SASL for the smtp client: whose credentials a server gets, which
mechanism, and Postfix's outcomes (smtp_sasl_glue.c).

With smtp_sasl_auth_enable, a new session looks its credentials up in
smtp_sasl_password_maps (``username:password``) by the server's host name,
then by the next hop as written in transport_maps or relayhost
(``[smtp.isp.example]:587``; also its canonical form without a default
port). No entry, or a server that does not announce AUTH: the mail goes
without authentication, as in Postfix. The table is read again when its file
changes, so a Kubernetes Secret mounted there (the operator writes one from
Transport.spec.authSecretRef, see the README) applies without a restart.

Mechanisms are aiosmtplib's (CRAM-MD5, PLAIN, LOGIN, in that order of
preference), narrowed by smtp_sasl_mechanism_filter and by the security
options in force: smtp_sasl_security_options in clear text,
smtp_sasl_tls_security_options under TLS. ``noplaintext`` excludes PLAIN and
LOGIN, so by default a password goes out in the clear only as CRAM-MD5, and
PLAIN/LOGIN only over TLS. When TLS is merely opportunistic and the handshake
fails, a session with credentials does not fall back to clear text (tls.py).

Outcomes, in Postfix's words: no usable mechanism, 4.7.0 "SASL
authentication failed; cannot authenticate to server host[ip]: no mechanism
available"; a refusal, "SASL authentication failed; server host[ip] said:
535 5.7.8 …" with the reply's status, made temporary by
smtp_sasl_auth_soft_bounce (the default). Either way the next server is
tried, as for any session that could not start.

Postfix parameters: smtp_sasl_auth_enable, smtp_sasl_password_maps,
smtp_sasl_security_options, smtp_sasl_tls_security_options,
smtp_sasl_mechanism_filter, smtp_sasl_auth_soft_bounce.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from postfleet.core.postmap import TableError, read_table, table_path
from postfleet.core.routing.nexthop import Nexthop
from postfleet.delivery.outcome import TransportFailure, outcome
from postfleet.delivery.session import Session
from postfleet.delivery.settings import DeliverySettings
from postfleet.delivery.tls import policy_keys
from postfleet.delivery.wire import reply_dsn, reply_text

MECHANISMS = ("CRAM-MD5", "PLAIN", "LOGIN")  # what the client can do, best first
PLAINTEXT = frozenset({"PLAIN", "LOGIN"})
FAILED = "SASL authentication failed; "
NO_MECHANISM = FAILED + "cannot authenticate to server {label}: no mechanism available"
SAID = FAILED + "server {label} said: {reply}"
LOOKUP_ERROR = "smtp_sasl_password_maps lookup error: {error}"


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str

    @classmethod
    def parse(cls, value: str) -> Credentials:
        # Historically the password may hold the delimiter: split at the first.
        username, _, password = value.partition(":")
        return cls(username, password)


class PasswordMaps:
    """smtp_sasl_password_maps, read again whenever its file changes."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.path = table_path(spec) if spec else None
        self._stamp: tuple[int, int] | None = None
        # An inline: table is read once; a file whenever it changes.
        self._entries = read_table(spec) if spec and self.path is None else {}

    def entries(self) -> dict[str, str]:
        if self.path is None:
            return self._entries
        try:
            info = os.stat(self.path)
        except OSError as exc:
            raise TableError(f"{self.spec}: {exc.strerror or exc}") from None
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp != self._stamp:
            self._entries = read_table(self.spec)
            self._stamp = stamp
        return self._entries

    def lookup(self, hostname: str, verbatim: str, nexthop: Nexthop) -> Credentials | None:
        entries = self.entries()
        host_key = hostname.lower().rstrip(".")
        keys = [host_key, *policy_keys(verbatim, nexthop)[:2]]
        for key in keys:
            value = entries.get(key)
            if value is not None:
                return Credentials.parse(value)
        return None


class ClientSasl:
    """The smtp client's SASL: credentials per session and the login."""

    def __init__(self, settings: DeliverySettings) -> None:
        self.enabled = settings.smtp_sasl_auth_enable
        self.maps = PasswordMaps(settings.smtp_sasl_password_maps if self.enabled else "")
        self.clear_options = frozenset(settings.smtp_sasl_security_options)
        self.tls_options = frozenset(settings.smtp_sasl_tls_security_options)
        self.filter = [m.upper() for m in settings.smtp_sasl_mechanism_filter]
        self.soft_bounce = settings.smtp_sasl_auth_soft_bounce
        self.timeout = settings.smtp_helo_timeout

    def credentials(self, hostname: str, verbatim: str, nexthop: Nexthop) -> Credentials | None:
        """The credentials for this server, or None; TransportFailure (4.3.0)
        when the table cannot be read."""
        if not self.enabled:
            return None
        try:
            return self.maps.lookup(hostname, verbatim, nexthop)
        except TableError as exc:
            raise TransportFailure(outcome("4.3.0", LOOKUP_ERROR.format(error=exc))) from None

    def mechanism(self, offered: list[str], tls: bool) -> str | None:
        options = self.tls_options if tls else self.clear_options
        for mechanism in MECHANISMS:
            if mechanism not in offered:
                continue
            if self.filter and mechanism not in self.filter:
                continue
            if "noplaintext" in options and mechanism in PLAINTEXT:
                continue
            return mechanism
        return None

    async def login(self, session: Session, credentials: Credentials) -> None:
        """AUTH on a session whose server announced it; TransportFailure when
        it cannot or is refused."""
        label, relay = session.address.label, session.address.relay
        mechanism = self.mechanism(session.auth_mechanisms, bool(session.tls))
        if mechanism is None:
            raise TransportFailure(outcome("4.7.0", NO_MECHANISM.format(label=label)), relay)
        resp = await session.authenticate(
            mechanism, credentials.username, credentials.password, self.timeout)
        if resp.code == 235:
            return
        dsn = reply_dsn(resp, None if resp.code >= 400 else "4")
        if self.soft_bounce and dsn.startswith("5"):
            dsn = "4" + dsn[1:]
        text = SAID.format(label=label, reply=reply_text(resp))
        raise TransportFailure(outcome(dsn, text, reply_text(resp)), relay)
