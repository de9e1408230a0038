"""RFC 3461 DSN parameters and RFC 6531 SMTPUTF8, as every role spells them.

What is kept in the queue store, in Postfix's forms (its queue file records):

- ``messages.ret``: ``FULL``, ``HDRS`` or empty (not given);
- ``messages.envid``: the ENVID, xtext-decoded;
- ``recipients.notify``: ``NEVER``, or some of ``SUCCESS``, ``FAILURE``,
  ``DELAY`` joined by commas, or empty (not given: failure and delay
  notices, as RFC 3461 says and Postfix does);
- ``recipients.orcpt``: ``addr-type;address`` with the address decoded
  (``rfc822;u@example.org``), as Postfix's dsn_orcpt.

SMTPUTF8: a message whose sender asked for it is recorded with the
Received protocol Postfix's smtpd writes for it (``UTF8SMTP``, plus ``S``
under TLS and ``A`` when authenticated, RFC 6531 section 3.7.4), so the
request travels with the message's protocol and needs no column of its own.

Postfix parameters: none (smtpd.c, dsn_mask.c and xtext.c's grammar).
"""

from __future__ import annotations

RET_VALUES = ("FULL", "HDRS")
NOTIFY_NEVER = "NEVER"
NOTIFY_WORDS = ("SUCCESS", "FAILURE", "DELAY")
# The protocol word a message received with SMTPUTF8 is recorded under.
UTF8_PROTOCOL = "UTF8SMTP"


class DsnSyntaxError(ValueError):
    """A DSN parameter that does not parse."""


def xtext_decode(text: str) -> str:
    """RFC 3461 xtext: "+XX" is the byte XX; anything else stands for itself.
    Raises DsnSyntaxError on a bad escape, a control character or a NUL."""
    out = bytearray()
    i = 0
    raw = text.encode("utf-8", "surrogateescape")
    while i < len(raw):
        byte = raw[i]
        if byte == ord("+"):
            pair = raw[i + 1:i + 3]
            if len(pair) != 2 or not all(chr(b) in "0123456789ABCDEFabcdef" for b in pair):
                raise DsnSyntaxError(f"bad xtext escape in {text!r}")
            out.append(int(pair, 16))
            i += 3
            continue
        if byte < 33 or byte == 127 or byte == ord("="):
            raise DsnSyntaxError(f"bad xtext character in {text!r}")
        out.append(byte)
        i += 1
    try:
        decoded = out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DsnSyntaxError(f"xtext {text!r} is not UTF-8") from exc
    if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in decoded):
        raise DsnSyntaxError(f"xtext {text!r} decodes to a control character")
    return decoded


_XTEXT_PLAIN = frozenset(range(33, 127)) - {ord("+"), ord("=")}


def xtext_encode(value: str) -> str:
    """RFC 3461 xtext: "+XX" for "+", "=", spaces, controls and non-ASCII bytes."""
    return "".join(chr(b) if b in _XTEXT_PLAIN else f"+{b:02X}" for b in value.encode())


def parse_ret(value: str) -> str:
    """``RET=`` value to ``FULL`` or ``HDRS``."""
    word = value.upper()
    if word not in RET_VALUES:
        raise DsnSyntaxError(f"RET={value}")
    return word


def parse_notify(value: str) -> str:
    """``NOTIFY=`` value to its stored form: ``NEVER`` alone, or some of
    SUCCESS, FAILURE, DELAY (each once), joined by commas."""
    words = [w.upper() for w in value.split(",")]
    if words == [NOTIFY_NEVER]:
        return NOTIFY_NEVER
    if not words or len(set(words)) != len(words) or not set(words) <= set(NOTIFY_WORDS):
        raise DsnSyntaxError(f"NOTIFY={value}")
    return ",".join(w for w in NOTIFY_WORDS if w in words)


def parse_orcpt(value: str) -> str:
    """``ORCPT=addr-type;xtext`` to ``addr-type;address``."""
    kind, semi, coded = value.partition(";")
    if not semi or not kind or not coded:
        raise DsnSyntaxError(f"ORCPT={value}")
    return f"{kind};{xtext_decode(coded)}"


def notify_wants(notify: str, word: str) -> bool:
    """Whether a recipient's NOTIFY asks for this kind of notice (SUCCESS,
    FAILURE or DELAY). Not given: failure and delay, never success."""
    words = notify.upper().split(",") if notify else ["FAILURE", "DELAY"]
    return word in words


def smtputf8_protocol(tls: bool, authenticated: bool) -> str:
    """The Received protocol of a message sent with SMTPUTF8 (Postfix's smtpd)."""
    return UTF8_PROTOCOL + ("S" if tls else "") + ("A" if authenticated else "")


def smtputf8_requested(protocol: str) -> bool:
    """Whether a message was received with the SMTPUTF8 parameter."""
    return protocol.upper().startswith(UTF8_PROTOCOL)
