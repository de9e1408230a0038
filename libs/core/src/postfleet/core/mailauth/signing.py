"""DKIM signing and ARC sealing with dkimpy.

DKIM (RFC 6376, RFC 8463): relaxed/relaxed, rsa-sha256 or ed25519-sha256 as
the key is, no l= tag. Signed are the header fields Postfix sites sign with
OpenDKIM (its SignHeaders default, RFC 6376 5.4.1's list): From, To, Cc,
Subject, Date, Message-ID, Reply-To, In-Reply-To, References, the MIME
fields, the Resent-* and List-* fields -- each one present, once per
occurrence -- and From once more than it occurs, so that a From added on the
way breaks the signature (RFC 6376 8.15, "over-signing").

ARC (RFC 8617): an ARC set (ARC-Seal, ARC-Message-Signature,
ARC-Authentication-Results) sealed over the message as it leaves, carrying
the Authentication-Results this system stamped (authserv-id myhostname):
dkimpy finds them by that id and takes the chain's state from their arc=
result. ARC signs with RSA only (RFC 8617 has no Ed25519).

Postfix parameters: none (the keys: keys.py).
"""

from __future__ import annotations

import dkim

from postfleet.core.mailauth import fields
from postfleet.core.mailauth.keys import DkimKey

SIGNED_HEADERS = (
    "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc",
    "mime-version", "content-type", "content-transfer-encoding", "content-id",
    "content-description", "resent-date", "resent-from", "resent-sender", "resent-to",
    "resent-cc", "resent-message-id", "in-reply-to", "references", "list-id", "list-help",
    "list-unsubscribe", "list-subscribe", "list-post", "list-owner", "list-archive",
)


def signed_headers(message: bytes) -> list[bytes]:
    """h=: each signed field as often as it occurs, and From once more."""
    present = [fields.name(f) for f in fields.split(message)[0]]
    chosen = [n.encode() for n in SIGNED_HEADERS for _ in range(present.count(n))]
    return [*chosen, b"from"]


def dkim_signature(message: bytes, key: DkimKey) -> bytes:
    """The DKIM-Signature field (with its CRLF) for ``message``."""
    return bytes(dkim.sign(
        message, key.selector.encode(), key.domain.encode(), key.private,
        canonicalize=(b"relaxed", b"relaxed"), signature_algorithm=key.algorithm.encode(),
        include_headers=signed_headers(message),
    ))


def sign(message: bytes, keys: list[DkimKey]) -> bytes:
    """The message with one DKIM-Signature per key on top."""
    signatures = [dkim_signature(message, key) for key in keys]
    return fields.prepend(message, *signatures)


def arc_seal(message: bytes, key: DkimKey, authserv_id: str) -> bytes | None:
    """The message with a new ARC set on top, or None when it has no
    Authentication-Results of ``authserv_id`` to seal (no chain to extend)."""
    if key.key_type != "rsa":
        raise ValueError(f"ARC seals with RSA keys only, {key.record_name} is {key.key_type}")
    headers = dkim.arc_sign(message, key.selector.encode(), key.domain.encode(), key.private,
                            authserv_id.encode())
    if not headers:
        return None
    return fields.prepend(message, *[bytes(h) for h in headers])
