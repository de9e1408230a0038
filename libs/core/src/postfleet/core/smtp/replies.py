"""SMTP replies: one error type and the reply texts every role shares.

Texts and enhanced status codes mirror Postfix's (smtpd, cleanup, smtp), so
log tooling and administrators see the replies they already know.
"""

from __future__ import annotations

from dataclasses import dataclass

from postfleet.core.proto.smtp.v1 import reply_pb2


@dataclass(frozen=True)
class SmtpReply:
    """A reply: basic code, enhanced status (RFC 3463) and text."""

    code: int
    status: str
    text: str

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        return " ".join(str(part) for part in (self.code, self.status, self.text) if part)

    def with_text(self, text: str) -> SmtpReply:
        return SmtpReply(self.code, self.status, text)

    def to_proto(self) -> reply_pb2.Reply:
        """The reply as it travels between roles (a refusal over gRPC)."""
        return reply_pb2.Reply(code=self.code, status=self.status, text=self.text,
                               temporary=self.temporary)

    @classmethod
    def from_proto(cls, reply: reply_pb2.Reply) -> SmtpReply:
        return cls(reply.code, reply.status, reply.text)


class SmtpError(Exception):
    """Raised anywhere a reply must reach the SMTP client (or the DSN)."""

    def __init__(self, reply: SmtpReply) -> None:
        super().__init__(str(reply))
        self.reply = reply

    @property
    def temporary(self) -> bool:
        return self.reply.temporary


OK = SmtpReply(250, "2.0.0", "Ok")
SENDER_OK = SmtpReply(250, "2.1.0", "Ok")
RCPT_OK = SmtpReply(250, "2.1.5", "Ok")
DATA_GO = SmtpReply(354, "", "End data with <CR><LF>.<CR><LF>")
RESET_OK = SmtpReply(250, "2.0.0", "Ok")
BYE = SmtpReply(221, "2.0.0", "Bye")
RELAY_DENIED = SmtpReply(554, "5.7.1", "Relay access denied")
QUEUE_UNAVAILABLE = SmtpReply(451, "4.3.0", "Error: queue file write error")
INSUFFICIENT_STORAGE = SmtpReply(452, "4.3.1", "Insufficient system storage")
SIZE_EXCEEDED = SmtpReply(552, "5.3.4", "Message size exceeds fixed limit")
TOO_MANY_RECIPIENTS = SmtpReply(452, "4.5.3", "Error: too many recipients")
NEED_RECIPIENTS = SmtpReply(554, "5.5.1", "Error: no valid recipients")
NEED_MAIL = SmtpReply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = SmtpReply(503, "5.5.1", "Error: need RCPT command")
NESTED_MAIL = SmtpReply(503, "5.5.1", "Error: nested MAIL command")
BAD_ADDRESS_SYNTAX = SmtpReply(501, "5.1.3", "Bad recipient address syntax")
BAD_SENDER_SYNTAX = SmtpReply(501, "5.1.7", "Bad sender address syntax")


def about(reply: SmtpReply, what: str, sep: str = " ") -> SmtpReply:
    """``reply`` with ``what`` appended: "... from 192.0.2.1", "...: reason"."""
    return reply.with_text(f"{reply.text}{sep}{what}")


def queued_as(queue_id: str, size: int | None = None) -> SmtpReply:
    """Postfix's answer to end-of-data once the message is in the queue;
    after BDAT it names the size too."""
    if size is not None:
        return SmtpReply(250, "2.0.0", f"Ok: {size} bytes queued as {queue_id}")
    return SmtpReply(250, "2.0.0", f"Ok: queued as {queue_id}")


def chunk_ok(size: int) -> SmtpReply:
    """Postfix's answer to a BDAT chunk that is not the last."""
    return SmtpReply(250, "2.0.0", f"Ok: {size} bytes")


def parse_reply(code: int, text: str, default_status: str | None = None) -> SmtpReply:
    """Split a remote reply's text into enhanced status and text, Postfix style.

    When the remote omits the enhanced status, Postfix derives X.0.0 from the
    basic code's class.
    """
    first, _, rest = text.partition(" ")
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and first[0] in "245":
        return SmtpReply(code, first, rest)
    status = default_status or f"{str(code)[0]}.0.0"
    return SmtpReply(code, status, text)


# -- smtpd (ingress-smtp) protocol replies, Postfix smtpd(8) texts ------------
# Texts that carry the client's address or our hostname are completed with
# ``with_text`` at the call site, e.g. RELAY_DENIED.with_text(f"<{rcpt}>: ...").
NOOP_OK = SmtpReply(250, "2.0.0", "Ok")
NEED_HELO = SmtpReply(503, "5.5.1", "Error: send HELO/EHLO first")
HELO_SYNTAX = SmtpReply(501, "5.5.4", "Syntax: HELO hostname")
EHLO_SYNTAX = SmtpReply(501, "5.5.4", "Syntax: EHLO hostname")
MAIL_SYNTAX = SmtpReply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
RCPT_SYNTAX = SmtpReply(501, "5.5.4", "Syntax: RCPT TO:<address>")
DATA_SYNTAX = SmtpReply(501, "5.5.4", "Syntax: DATA")
VRFY_SYNTAX = SmtpReply(501, "5.5.4", "Syntax: VRFY address")
BAD_SIZE_SYNTAX = SmtpReply(501, "5.5.4", "Bad message size syntax")
BAD_BODY_SYNTAX = SmtpReply(501, "5.5.4", "Unsupported BODY parameter")
UNSUPPORTED_OPTION = SmtpReply(555, "5.5.4", "Unsupported option")  # + ": NAME"
UNKNOWN_COMMAND = SmtpReply(502, "5.5.2", "Error: command not recognized")
NOT_IMPLEMENTED = SmtpReply(502, "5.5.1", "Error: command not implemented")
BAD_SYNTAX = SmtpReply(500, "5.5.2", "Error: bad syntax")
LINE_TOO_LONG = SmtpReply(500, "5.5.2", "Error: command line too long")
# RFC 3461 DSN parameters (smtpd.c mail_cmd, rcpt_cmd).
BAD_RET_SYNTAX = SmtpReply(501, "5.5.4", "Bad RET parameter syntax")
BAD_ENVID_SYNTAX = SmtpReply(501, "5.5.4", "Bad ENVID parameter syntax")
BAD_NOTIFY_SYNTAX = SmtpReply(501, "5.5.4", "Error: Bad NOTIFY parameter syntax")
BAD_ORCPT_SYNTAX = SmtpReply(501, "5.5.4", "Error: Bad ORCPT parameter syntax")
# RFC 3030 CHUNKING (smtpd.c bdat_cmd, skip_bdat). A 521 ends the session.
BDAT_SYNTAX = SmtpReply(521, "5.5.4", "Syntax: BDAT count [LAST]")
NULL_BDAT = SmtpReply(551, "5.7.1", "Null BDAT request")
BDAT_DISCARDED = SmtpReply(551, "5.0.0", "Discarded")  # + " N bytes after earlier error"
BDAT_TOO_BIG = SmtpReply(552, "5.3.4", "Chunk exceeds message size limit")
MAIL_AFTER_BDAT = SmtpReply(503, "5.5.1", "Error: MAIL after BDAT")
RCPT_AFTER_BDAT = SmtpReply(503, "5.5.1", "Error: RCPT after BDAT")
DATA_AFTER_BDAT = SmtpReply(503, "5.5.1", "Error: DATA after BDAT")
# ETRN (smtpd.c etrn_cmd): Postfix answers these without enhanced status codes.
ETRN_STARTED = SmtpReply(250, "", "Queuing started")
ETRN_SYNTAX = SmtpReply(500, "", "Syntax: ETRN domain")
ETRN_BAD_DOMAIN = SmtpReply(501, "", "Error: invalid parameter syntax")
ETRN_IN_TRANSACTION = SmtpReply(503, "", "Error: MAIL transaction in progress")
ETRN_NEED_HELO = SmtpReply(503, "", "Error: send HELO/EHLO first")
ETRN_DENIED = SmtpReply(459, "", "service unavailable")  # "<domain>: " first
ETRN_UNABLE = SmtpReply(458, "", "Unable to queue messages")
AUTH_NOT_ENABLED = SmtpReply(503, "5.5.1", "Error: authentication not enabled")
VRFY_ANSWER = SmtpReply(252, "2.0.0", "")  # Postfix: "252 2.0.0 <address as given>"
BARE_LF_REJECTED = SmtpReply(550, "5.5.2", "Error: bare <LF> received")
RELAY_DEFERRED = SmtpReply(454, "4.7.1", "Relay access denied")
RCPT_ACCESS_DENIED = SmtpReply(554, "5.7.1", "Recipient address rejected: Access denied")
RCPT_ACCESS_DEFERRED = SmtpReply(450, "4.7.1", "Recipient address rejected: Access denied")
CONFIG_ERROR = SmtpReply(451, "4.3.5", "Server configuration error")
# SMTP AUTH (smtpd_sasl_proto.c, smtpd_sasl_glue.c). Failures end in ": REASON".
AUTH_OK = SmtpReply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = SmtpReply(535, "5.7.8", "Error: authentication failed")
AUTH_TEMPFAIL = SmtpReply(454, "4.7.0", "Temporary authentication failure")
AUTH_ABORTED = SmtpReply(501, "5.7.0", "Authentication aborted")
AUTH_SYNTAX = SmtpReply(501, "5.5.4", "Syntax: AUTH mechanism")
AUTH_IN_TRANSACTION = SmtpReply(503, "5.5.1", "Error: MAIL transaction in progress")
ALREADY_AUTHENTICATED = SmtpReply(503, "5.5.1", "Error: already authenticated")
SASL_RESPONSE_TOO_LONG = SmtpReply(500, "5.5.6", "SASL response limit exceeded")
MULTIPLE_AUTH_PARAM = SmtpReply(503, "5.5.4", "Error: multiple AUTH= options")
# smtpd_client_restrictions refused the client (smtpd_delay_reject = no): + " name[ip]".
ACCESS_DENIED = SmtpReply(503, "5.7.0", "Error: access denied for")
# anvil limits (smtpd.c): the text ends with the client's address.
TOO_MUCH_MAIL = SmtpReply(450, "4.7.1", "Error: too much mail from")
TOO_MANY_RCPTS_FROM = SmtpReply(450, "4.7.1", "Error: too many recipients from")
TOO_MANY_AUTH = SmtpReply(450, "4.7.1", "Error: too many AUTH commands from")
# 421 replies name the server first: with_text(f"{myhostname} {r.text}").
TOO_MANY_CONNECTIONS = SmtpReply(421, "4.7.0", "Error: too many connections from")
TOO_MANY_ERRORS = SmtpReply(421, "4.7.0", "Error: too many errors")
TIMEOUT_EXCEEDED = SmtpReply(421, "4.4.2", "Error: timeout exceeded")
SHUTTING_DOWN = SmtpReply(421, "4.3.2", "Service shutting down, closing transmission channel")


# -- recipient validation (smtpd reject_unlisted_recipient, trivial-rewrite's
# error results, cleanup's address mapping) -----------------------------------
# At RCPT time they read "<rcpt>: Recipient address rejected: TEXT"
# (``recipient_rejected``); as error-transport nexthops, "X.Y.Z TEXT".
RCPT_REJECTED = "Recipient address rejected"
USER_UNKNOWN = SmtpReply(550, "5.1.1", "User unknown")  # show_user_unknown_table_name=no
USER_UNKNOWN_LOCAL = SmtpReply(550, "5.1.1", "User unknown in local recipient table")
USER_UNKNOWN_VIRTUAL_ALIAS = SmtpReply(550, "5.1.1", "User unknown in virtual alias table")
USER_UNKNOWN_VIRTUAL_MAILBOX = SmtpReply(550, "5.1.1", "User unknown in virtual mailbox table")
USER_MOVED = SmtpReply(550, "5.1.6", "User has moved to")  # + " " + relocated_maps value
ADDRESS_UNDELIVERABLE = SmtpReply(550, "5.1.1", "Address is undeliverable")  # bare error:
# cleanup: virtual_alias_maps expansion/recursion limits, canonical loops.
ALIAS_EXPANSION_ERROR = SmtpReply(451, "4.6.0", "Alias expansion error")


def recipient_rejected(reply: SmtpReply, recipient: str) -> SmtpReply:
    """smtpd's wording: ``550 5.1.1 <rcpt>: Recipient address rejected: TEXT``."""
    return reply.with_text(f"<{recipient}>: {RCPT_REJECTED}: {reply.text}")


# -- content checks (cleanup's header_checks/body_checks REJECT, Postfix
# cleanup_strerror's CLEANUP_STAT_CONT; the filter role's refusals) -----------
CONTENT_REJECTED = SmtpReply(550, "5.7.1", "message content rejected")
# The filter role's verdicts on a message (amavisd-new answers 554 5.7.0 too).
VIRUS_FOUND = SmtpReply(554, "5.7.0", "Rejected: virus found")  # + ": NAME"
SPAM_FOUND = SmtpReply(554, "5.7.0", "Rejected: spam")  # + " (score X)"
SCANNER_UNAVAILABLE = SmtpReply(451, "4.3.0", "content scanner unavailable")  # + ": why"


# -- mail authentication (ingress-smtp's checks; OpenDMARC's and
# postfix-policyd-spf-python's replies; RFC 7372 gives SPF its 5.7.23) -------
SPF_REJECTED = SmtpReply(550, "5.7.23", "Message rejected due to: SPF fail - not authorized")
DMARC_REJECTED = SmtpReply(550, "5.7.1", "rejected by DMARC policy for")  # + " DOMAIN"
# Milters (Postfix smtpd_milter/cleanup_milter.c): a milter's reject and
# tempfail without a reply of its own, and milter_default_action's.
MILTER_REJECTED = SmtpReply(550, "5.7.1", "Command rejected")
MILTER_TEMPFAIL = SmtpReply(451, "4.7.1", "Service unavailable - try again later")
MILTER_CONFIG_ERROR = SmtpReply(451, "4.3.5", "Server configuration problem - try again later")
