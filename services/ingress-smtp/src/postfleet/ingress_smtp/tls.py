"""ingress-smtp: the server side of TLS (Postfix smtpd's STARTTLS and wrapper
mode, tls_server.c in small): the SSL context of a listener, its protocol
range, its replies, and certificate rotation.

The certificate and key are PEM files -- cert-manager's ``tls.crt`` and
``tls.key`` from a mounted ``kubernetes.io/tls`` Secret. They are loaded when
the listener starts (an unreadable pair stops the role, so a bad Secret never
goes live), and re-read when the files change on disk (the kubelet swaps the
mounted Secret when cert-manager renews it), checked at most every
``RELOAD_CHECK_SECONDS``; a pair that fails to load then keeps the previous
context serving, with a warning -- Postfix needs ``postfix reload`` for that.

Protocols: ``smtpd_tls_protocols`` (opportunistic TLS, level ``may``) and
``smtpd_tls_mandatory_protocols`` (level ``encrypt`` and wrapper mode) take
Postfix's syntax -- ``>=TLSv1.2``, ``<=TLSv1.3``, ``!TLSv1, !TLSv1.1``, or a
list of names -- but the default here is ``>=TLSv1.2``, not Postfix's
``>=TLSv1``: TLS 1.0 and 1.1 are deprecated (RFC 8996) and OpenSSL 3 refuses
them at its default security level anyway. SSLv2/SSLv3 are never offered.
The range must be contiguous (OpenSSL takes a minimum and a maximum).

No client certificate is requested (Postfix ``smtpd_tls_ask_ccert = no``);
cipher choice is OpenSSL's default (close to Postfix's ``medium`` grade).

Postfix parameters: smtpd_tls_cert_file, smtpd_tls_key_file,
smtpd_tls_protocols, smtpd_tls_mandatory_protocols (the rest of the TLS
parameters are read in ``protocol.py``).
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import time

from postfleet.core.smtp.replies import SmtpReply

log = logging.getLogger(__name__)

RELOAD_CHECK_SECONDS = 60.0

# Postfix smtpd's STARTTLS replies (smtpd.c starttls_cmd and the command loop).
STARTTLS_READY = SmtpReply(220, "2.0.0", "Ready to start TLS")
STARTTLS_SYNTAX = SmtpReply(501, "5.5.4", "Syntax: STARTTLS")
TLS_ALREADY_ACTIVE = SmtpReply(554, "5.5.1", "Error: TLS already active")
MUST_STARTTLS = SmtpReply(530, "5.7.0", "Must issue a STARTTLS command first")

# Postfix's protocol names, oldest first. SSLv2/SSLv3 are understood (so that
# "!SSLv2, !SSLv3" and ">=SSLv3" parse) but never enabled.
_NAMES = ("sslv2", "sslv3", "tlsv1", "tlsv1.1", "tlsv1.2", "tlsv1.3")
_VERSIONS = {
    "tlsv1": ssl.TLSVersion.TLSv1,
    "tlsv1.1": ssl.TLSVersion.TLSv1_1,
    "tlsv1.2": ssl.TLSVersion.TLSv1_2,
    "tlsv1.3": ssl.TLSVersion.TLSv1_3,
}


def _rank(name: str, value: str) -> int:
    try:
        return _NAMES.index(name.lower())
    except ValueError:
        raise ValueError(
            f"unknown TLS protocol {name!r} in {value!r} (known: SSLv2, SSLv3, TLSv1, "
            "TLSv1.1, TLSv1.2, TLSv1.3)"
        ) from None


def protocol_range(value: str) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    """Postfix's protocol list -> (minimum, maximum) TLS version."""
    allowed = set(range(_NAMES.index("tlsv1"), len(_NAMES)))
    included: set[int] = set()
    for token in (t for t in re.split(r"[\s,:]+", value.strip()) if t):
        if token.startswith(">="):
            low = _rank(token[2:], value)
            allowed = {r for r in allowed if r >= low}
        elif token.startswith("<="):
            high = _rank(token[2:], value)
            allowed = {r for r in allowed if r <= high}
        elif token.startswith("!"):
            allowed.discard(_rank(token[1:], value))
        else:
            included.add(_rank(token, value))
    if included:
        allowed &= included
    if not allowed:
        raise ValueError(f"no TLS protocol left enabled by {value!r}")
    low, high = min(allowed), max(allowed)
    if set(range(low, high + 1)) != allowed:
        raise ValueError(f"{value!r}: the enabled TLS protocols must be a contiguous range")
    return _VERSIONS[_NAMES[low]], _VERSIONS[_NAMES[high]]


def _stamp(paths: tuple[str, ...]) -> tuple[tuple[int, int, int], ...]:
    """What changes when a file is replaced (following the kubelet's symlinks)."""
    out = []
    for path in paths:
        st = os.stat(path)
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class ServerTls:
    """The SSL context of the listeners that share one certificate and protocol range."""

    def __init__(
        self, cert_file: str, key_file: str, protocols: str,
        *, check_every: float | None = None,
    ) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.protocols = protocol_range(protocols)
        self.check_every = RELOAD_CHECK_SECONDS if check_every is None else check_every
        self._paths = (cert_file, key_file)
        try:
            self._stamp = _stamp(self._paths)
            self._context = self._load()
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ValueError(
                f"smtpd_tls_cert_file={cert_file} smtpd_tls_key_file={key_file}: "
                f"cannot load the certificate and key: {exc}"
            ) from exc
        self._checked = time.monotonic()

    def _load(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version, context.maximum_version = self.protocols
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def context(self) -> ssl.SSLContext:
        """The context for a new handshake; re-read first if the files changed."""
        now = time.monotonic()
        if now - self._checked < self.check_every:
            return self._context
        self._checked = now
        try:
            stamp = _stamp(self._paths)
            if stamp != self._stamp:
                self._context = self._load()
                self._stamp = stamp
                log.info("smtpd TLS: reloaded %s and %s", self.cert_file, self.key_file)
        except (OSError, ValueError) as exc:
            # Half-written or mismatched files: keep serving the last good pair,
            # try again at the next check.
            log.warning("smtpd TLS: cannot reload %s and %s, keeping the previous "
                        "certificate: %s", self.cert_file, self.key_file, exc)
        return self._context


def tls_facts(summary: dict[str, object]) -> str:
    """Postfix's words for a session: "TLSv1.3 with cipher X (256/256 bits)"."""
    bits = summary.get("bits")
    return (f"{summary.get('protocol')} with cipher {summary.get('cipher')} "
            f"({bits}/{summary.get('alg_bits', bits)} bits)")


def tls_received_comments(summary: dict[str, object]) -> list[str]:
    """smtpd_tls_received_header: the Received: comments of a TLS session
    (smtpd.c; no client certificate is ever requested here)."""
    return [f"(using {tls_facts(summary)})", "(No client certificate requested)"]


def tls_summary(ssl_object: ssl.SSLObject | None) -> dict[str, object]:
    """The negotiated protocol and cipher, as Postfix logs them."""
    if ssl_object is None:
        return {}
    cipher = ssl_object.cipher()
    name, bits = (cipher[0], cipher[2]) if cipher else ("unknown", 0)
    # Postfix logs used/algorithm bits; OpenSSL's are equal for today's ciphers.
    return {"protocol": ssl_object.version() or "unknown", "cipher": name, "bits": bits,
            "alg_bits": bits}
