"""The milter protocol's wire format (libmilter's mfdef.h), 8-bit clean.

Every packet is a 4-byte length (network order, counting the command byte),
one command byte, and the command's data: NUL-terminated strings, network
order 16/32-bit integers, or raw bytes (body chunks). Strings travel as
bytes: header values and body chunks may be any 8-bit text, so nothing here
decodes them as UTF-8.

Postfix parameters: none.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

VERSION = 6
CHUNK_SIZE = 65535  # MILTER_CHUNK_SIZE: the largest SMFIC_BODY
MAX_PACKET = 1024 * 1024 * 2  # a sanity bound on a reply's length

# MTA -> milter
SMFIC_ABORT = b"A"
SMFIC_BODY = b"B"
SMFIC_CONNECT = b"C"
SMFIC_MACRO = b"D"
SMFIC_BODYEOB = b"E"
SMFIC_HELO = b"H"
SMFIC_HEADER = b"L"
SMFIC_MAIL = b"M"
SMFIC_EOH = b"N"
SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
SMFIC_RCPT = b"R"
SMFIC_DATA = b"T"

# milter -> MTA
SMFIR_ADDRCPT = b"+"
SMFIR_DELRCPT = b"-"
SMFIR_ADDRCPT_PAR = b"2"
SMFIR_SHUTDOWN = b"4"
SMFIR_ACCEPT = b"a"
SMFIR_REPLBODY = b"b"
SMFIR_CONTINUE = b"c"
SMFIR_DISCARD = b"d"
SMFIR_CHGFROM = b"e"
SMFIR_CONN_FAIL = b"f"
SMFIR_ADDHEADER = b"h"
SMFIR_INSHEADER = b"i"
SMFIR_SETSYMLIST = b"l"
SMFIR_CHGHEADER = b"m"
SMFIR_PROGRESS = b"p"
SMFIR_QUARANTINE = b"q"
SMFIR_REJECT = b"r"
SMFIR_SKIP = b"s"
SMFIR_TEMPFAIL = b"t"
SMFIR_REPLYCODE = b"y"

# Actions a milter may take (SMFIF_*): what the MTA offers in OPTNEG.
SMFIF_ADDHDRS = 0x001
SMFIF_CHGBODY = 0x002
SMFIF_ADDRCPT = 0x004
SMFIF_DELRCPT = 0x008
SMFIF_CHGHDRS = 0x010
SMFIF_QUARANTINE = 0x020
SMFIF_CHGFROM = 0x040
SMFIF_ADDRCPT_PAR = 0x080
SMFIF_SETSYMLIST = 0x100
ACTIONS_V2 = 0x03F
ACTIONS_V6 = 0x1FF

# Protocol steps (SMFIP_*): what a milter asks the MTA to leave out.
SMFIP_NOCONNECT = 0x00000001
SMFIP_NOHELO = 0x00000002
SMFIP_NOMAIL = 0x00000004
SMFIP_NORCPT = 0x00000008
SMFIP_NOBODY = 0x00000010
SMFIP_NOHDRS = 0x00000020
SMFIP_NOEOH = 0x00000040
SMFIP_NR_HDR = 0x00000080
SMFIP_NOUNKNOWN = 0x00000100
SMFIP_NODATA = 0x00000200
SMFIP_SKIP = 0x00000400
SMFIP_RCPT_REJ = 0x00000800
SMFIP_NR_CONN = 0x00001000
SMFIP_NR_HELO = 0x00002000
SMFIP_NR_MAIL = 0x00004000
SMFIP_NR_RCPT = 0x00008000
SMFIP_NR_DATA = 0x00010000
SMFIP_NR_UNKN = 0x00020000
SMFIP_NR_EOH = 0x00040000
SMFIP_NR_BODY = 0x00080000
SMFIP_HDR_LEADSPC = 0x00100000
PROTOCOL_V2 = 0x0000007F

# SMFIC_MACRO's stage codes are the command bytes of the stage.
FAMILY_UNKNOWN = b"U"
FAMILY_INET = b"4"
FAMILY_INET6 = b"6"


class MilterProtocolError(Exception):
    """The milter said something the protocol does not allow."""


def offered_protocol(version: int) -> int:
    """The steps this MTA can leave out, and its other protocol features, per
    milter_protocol (Postfix's milter8 protocol masks)."""
    steps = PROTOCOL_V2
    if version >= 3:
        steps |= SMFIP_NOUNKNOWN
    if version >= 4:
        steps |= SMFIP_NODATA
    if version >= 6:
        steps |= (SMFIP_SKIP | SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_MAIL | SMFIP_NR_RCPT
                  | SMFIP_NR_DATA | SMFIP_NR_UNKN | SMFIP_NR_EOH | SMFIP_NR_BODY
                  | SMFIP_HDR_LEADSPC)
    return steps


def offered_actions(version: int) -> int:
    return ACTIONS_V6 if version >= 6 else ACTIONS_V2


def packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack("!L", len(data) + 1) + command + data


def strings(*values: bytes | str) -> bytes:
    """NUL-terminated strings, one after the other."""
    return b"".join((v.encode("utf-8") if isinstance(v, str) else v) + b"\0" for v in values)


def optneg(version: int, actions: int, protocol: int) -> bytes:
    return packet(SMFIC_OPTNEG, struct.pack("!LLL", version, actions, protocol))


def macros(stage: bytes, values: Iterable[tuple[str, str]]) -> bytes:
    pairs = [s for name, value in values for s in (name, value)]
    return packet(SMFIC_MACRO, stage + strings(*pairs))


def connect(hostname: str, family: bytes, port: int, address: str) -> bytes:
    data = strings(hostname) + family
    if family != FAMILY_UNKNOWN:
        data += struct.pack("!H", port) + strings(address)
    return packet(SMFIC_CONNECT, data)


def split_strings(data: bytes) -> list[bytes]:
    """NUL-terminated strings: every one must be terminated."""
    if data and not data.endswith(b"\0"):
        raise MilterProtocolError("a string without its NUL terminator")
    return data.split(b"\0")[:-1] if data else []


def parse_optneg(data: bytes) -> tuple[int, int, int, dict[bytes, list[str]]]:
    """The milter's OPTNEG: version, actions, protocol, and the macro lists
    it asked for per stage (SMFIM_* numbers mapped to stage commands)."""
    if len(data) < 12:
        raise MilterProtocolError("OPTNEG too short")
    version, actions, protocol = struct.unpack("!LLL", data[:12])
    wanted: dict[bytes, list[str]] = {}
    rest = data[12:]
    stages = {0: SMFIC_CONNECT, 1: SMFIC_HELO, 2: SMFIC_MAIL, 3: SMFIC_RCPT, 4: SMFIC_DATA,
              5: SMFIC_BODYEOB, 6: SMFIC_EOH}
    while len(rest) >= 4:
        (where,) = struct.unpack("!L", rest[:4])
        end = rest.find(b"\0", 4)
        if end < 0:
            raise MilterProtocolError("OPTNEG macro list without its NUL terminator")
        if where in stages:
            wanted[stages[where]] = rest[4:end].decode("ascii", "replace").split()
        rest = rest[end + 1:]
    return version, actions, protocol, wanted


def parse_index_header(data: bytes) -> tuple[int, bytes, bytes]:
    """CHGHEADER/INSHEADER: index, name, value."""
    if len(data) < 4:
        raise MilterProtocolError("header change too short")
    (index,) = struct.unpack("!L", data[:4])
    name, value = _pair(data[4:])
    return index, name, value


def parse_header(data: bytes) -> tuple[bytes, bytes]:
    return _pair(data)


def _pair(data: bytes) -> tuple[bytes, bytes]:
    parts = split_strings(data)
    if len(parts) != 2:
        raise MilterProtocolError("expected a name and a value")
    return parts[0], parts[1]
