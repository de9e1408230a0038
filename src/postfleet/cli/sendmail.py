"""``postfleet sendmail``: sendmail(1) as Postfix ships it, for scripts and
applications without SMTP (a content filter's re-injection, a pod's cron job).

    postfleet sendmail [-f sender] [-t] [-i|-oi] [-G] [-F name] [-N dsn]
                       [-R ret] [-V envid] [--] [recipient ...]

The message is read from standard input (a line with a lone "." ends it
unless -i or -oi), its line ends made CRLF, and submitted through cleanup's
gRPC Submit, as Postfix's postdrop/pickup hand it to cleanup: the command
returns once the message is committed to the queue. With -t the recipients
are also taken from To:, Cc: and Bcc: (Resent- ones when present), and Bcc:
is removed. The sender is -f, or the login name (cleanup qualifies it with
myorigin). Like pickup, it applies the ``content_filter`` and
``receive_override_options`` of the config file, the ``pickup:`` section
over the top level (master.cf's ``pickup ... -o content_filter=``).

Exit codes (sysexits.h, as sendmail's): 0 queued; 64 (EX_USAGE) bad
arguments or no recipient; 69 (EX_UNAVAILABLE) cleanup refused the message
with a 5xx reply; 75 (EX_TEMPFAIL) cleanup unavailable or a 4xx reply: try
again later. -G (gateway submission), -F and -bm are accepted; -F adds no
From: header.

Postfix parameters: content_filter, receive_override_options (the pickup
service's); cleanup_address (where cleanup listens: POSTFLEET_CLEANUP_ADDRESS,
the config file, or var/run.json written by `postfleet run all`).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import sys
from collections.abc import Iterator
from email.utils import getaddresses
from pathlib import Path
from typing import Any, BinaryIO

EX_OK = 0
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75
CHUNK = 64 * 1024
USAGE = ("usage: postfleet sendmail [-f sender] [-t] [-i|-oi] [-G] [-F name] [-N dsn] "
         "[-R ret] [-V envid] [--] [recipient ...]")


class Usage(Exception):
    pass


def parse_args(argv: list[str]) -> dict[str, Any]:
    """sendmail's options (getopt style: -fsender or -f sender)."""
    opts: dict[str, Any] = {"sender": None, "extract": False, "dots": True, "notify": "",
                            "ret": "", "envid": "", "recipients": []}
    with_value = {"f": "sender", "F": "fullname", "N": "notify", "R": "ret", "V": "envid",
                  "r": "sender"}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            opts["recipients"].extend(argv[i + 1:])
            break
        if not arg.startswith("-") or arg == "-":
            opts["recipients"].append(arg)
            i += 1
            continue
        letter, rest = arg[1], arg[2:]
        if letter in with_value:
            if not rest:
                i += 1
                if i >= len(argv):
                    raise Usage(f"option -{letter} requires an argument")
                rest = argv[i]
            opts[with_value[letter]] = rest
        elif letter == "t":
            opts["extract"] = True
        elif letter == "i" or arg == "-oi":
            opts["dots"] = False
        elif letter == "o" or letter in "GUmvn" or arg in ("-bm", "-bd"):
            pass  # -oX (sendmail options), -G gateway, -U initial: accepted, no effect here
        elif letter == "b":
            raise Usage(f"unsupported mode {arg}: only -bm (deliver mail) is supported")
        else:
            raise Usage(f"unknown option {arg}")
        i += 1
    return opts


def read_message(stream: BinaryIO, dots: bool) -> bytes:
    """Standard input to CRLF lines; a lone "." ends it unless -i/-oi."""
    lines: list[bytes] = []
    for raw in stream:
        line = raw.rstrip(b"\r\n")
        if dots and line == b".":
            break
        lines.append(line + b"\r\n")
    return b"".join(lines)


_HEADER_END = re.compile(rb"\r\n\r\n|^\r\n")


def extract_recipients(message: bytes) -> tuple[list[str], bytes]:
    """-t: To/Cc/Bcc (Resent-To/Cc/Bcc when the message has any) and the
    message without its Bcc: headers."""
    end = _HEADER_END.search(message)
    cut = end.start() + 2 if end else len(message)
    headers, body = message[:cut], message[cut:]
    logical: list[list[bytes]] = []
    for line in headers.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and logical:
            logical[-1].append(line)
        elif line:
            logical.append([line])
    names = [h[0].split(b":", 1)[0].strip().lower() for h in logical]
    resent = any(n.startswith(b"resent-") for n in names)
    wanted = ({b"resent-to", b"resent-cc", b"resent-bcc"} if resent
              else {b"to", b"cc", b"bcc"})
    values = [b" ".join(part.strip() for part in h).split(b":", 1)[1].decode("utf-8", "replace")
              for h, n in zip(logical, names, strict=True) if n in wanted]
    recipients = [addr for _name, addr in getaddresses(values) if addr]
    kept = [h for h, n in zip(logical, names, strict=True) if n not in (b"bcc", b"resent-bcc")]
    rebuilt = b"".join(b"\r\n".join(h) + b"\r\n" for h in kept)
    return recipients, rebuilt + body


def _pickup_settings(config: dict[str, Any]) -> tuple[str, list[str]]:
    merged = {**config, **(config.get("pickup") or {})}
    options = merged.get("receive_override_options") or []
    if isinstance(options, str):
        options = [o for o in re.split(r"[,\s]+", options) if o]
    return str(merged.get("content_filter") or ""), list(options)


def cleanup_address(config: dict[str, Any], var_dir: Path) -> str:
    if os.environ.get("POSTFLEET_CLEANUP_ADDRESS"):
        return os.environ["POSTFLEET_CLEANUP_ADDRESS"]
    state = var_dir / "run.json"
    if state.exists():
        found = json.loads(state.read_text()).get("cleanup_address")
        if found:
            return str(found)
    return str(config.get("cleanup_address") or "127.0.0.1:10027")


def sendmail(argv: list[str], stdin: BinaryIO, config: dict[str, Any], var_dir: Path) -> int:
    import grpc

    from postfleet.core.proto.cleanup.v1 import cleanup_pb2, cleanup_pb2_grpc
    from postfleet.core.smtp.replies import SmtpReply

    try:
        opts = parse_args(argv)
    except Usage as exc:
        print(f"postfleet sendmail: fatal: {exc}\n{USAGE}", file=sys.stderr)
        return EX_USAGE
    message = read_message(stdin, opts["dots"])
    recipients: list[str] = list(opts["recipients"])
    if opts["extract"]:
        found, message = extract_recipients(message)
        recipients += found
    if not recipients:
        print("postfleet sendmail: fatal: no recipients specified", file=sys.stderr)
        return EX_USAGE
    sender = opts["sender"] if opts["sender"] is not None else getpass.getuser()
    sender = sender.strip("<>")
    content_filter, overrides = _pickup_settings(config)
    envelope = cleanup_pb2.Envelope(
        sender=sender, content_filter=content_filter, ret=opts["ret"], envid=opts["envid"],
        recipients=[cleanup_pb2.Recipient(address=r.strip("<>"), notify=opts["notify"])
                    for r in recipients],
        client=cleanup_pb2.ClientInfo(protocol="local"),
        overrides=cleanup_pb2.ReceiveOverrides(
            no_address_mappings="no_address_mappings" in overrides,
            no_header_body_checks="no_header_body_checks" in overrides,
            no_milters="no_milters" in overrides),
    )

    def parts() -> Iterator[cleanup_pb2.SubmitRequest]:
        yield cleanup_pb2.SubmitRequest(envelope=envelope)
        for i in range(0, len(message), CHUNK):
            yield cleanup_pb2.SubmitRequest(chunk=message[i:i + CHUNK])

    address = cleanup_address(config, var_dir)
    with grpc.insecure_channel(address) as channel:
        try:
            reply = cleanup_pb2_grpc.CleanupStub(channel).Submit(parts(), timeout=60)
        except grpc.RpcError as exc:
            print(f"postfleet sendmail: fatal: cleanup at {address} unavailable: "
                  f"{exc.code().name.lower()}", file=sys.stderr)
            return EX_TEMPFAIL
    if reply.HasField("refusal"):
        refusal = SmtpReply.from_proto(reply.refusal)
        print(f"postfleet sendmail: fatal: {refusal}", file=sys.stderr)
        return EX_TEMPFAIL if refusal.temporary else EX_UNAVAILABLE
    return EX_OK
