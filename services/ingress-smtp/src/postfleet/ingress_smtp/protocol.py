"""ingress-smtp: the SMTP protocol engine (Postfix smtpd.c's command loop and
smtp_stream.c), on aiosmtpd.

aiosmtpd gives the connection handling, the command loop, line limits and
the idle timer; this subclass gives it Postfix's grammar and replies:
HELO/EHLO with Postfix 3.7's keywords in its order (PIPELINING, SIZE, VRFY,
ETRN, STARTTLS, AUTH, ENHANCEDSTATUSCODES, 8BITMIME, DSN, SMTPUTF8,
CHUNKING), MAIL with the null sender and SIZE=/BODY=/SMTPUTF8/RET=/ENVID=,
RCPT with NOTIFY=/ORCPT= (RFC 3461, kept per recipient), a DATA reader that
ends only at <CR><LF>.<CR><LF> and applies smtpd_forbid_bare_newline,
accepts long lines (as Postfix does) and enforces message_size_limit, BDAT
(RFC 3030: counted chunks, no end-of-data marker at all, the same bare <LF>
rule and size limit, Postfix's replies and its discard-after-error state),
ETRN (the deferred mail of a site is flushed: ``flush_site`` asks qmgr), the
error limits, the Postfix timeout reply, and SIGTERM drain. Policy
(restrictions, recipient limit) and submission live in the handler
(``handler.py``) behind aiosmtpd's ``handle_MAIL``/``handle_RCPT``/
``handle_DATA`` hooks; address parsing and reply formatting in
``grammar.py``; per-client state in ``session.py``. ``Sessions`` (below) is
the set of live sessions that SIGTERM drains.

UTF-8 (RFC 6531): command arguments are read as UTF-8; a MAIL with SMTPUTF8
(smtputf8_enable) marks the message, whose Received protocol becomes
UTF8SMTP (postfleet.core.smtp.dsn). As Postfix (strict_smtputf8 = no), an
8-bit address is accepted without SMTPUTF8 too; bytes that are not UTF-8
are bad address syntax.

Every command and reply is kept for the postmaster's transcript
(``transcript.py``), mailed when a session ends (or a transaction ends past
smtpd_history_flush_threshold lines) with errors of a notify_classes class.

TLS (Postfix smtpd's STARTTLS and wrapper mode, certificates in ``tls.py``):
with ``smtpd_tls_security_level = may`` EHLO offers STARTTLS; ``encrypt``
answers every command but HELO, EHLO, STARTTLS, NOOP and QUIT with ``530
5.7.0 Must issue a STARTTLS command first`` until TLS is on. STARTTLS answers
``220 2.0.0 Ready to start TLS``, throws away any plaintext pipelined after
it (CVE-2011-0411), forgets HELO and the transaction (RFC 3207 4.2), and a
failed handshake ends the session, as in Postfix. ``smtpd_tls_wrappermode``
(smtps, port 465) does the handshake before the banner. Under TLS the
protocol recorded for Received: becomes ESMTPS. The handshake is StreamWriter
``start_tls`` (asyncio's public API) rather than aiosmtpd's own STARTTLS,
which only exists after a 220 and re-creates the session.

SMTP AUTH (``smtpd_sasl_auth_enable``, backends in ``sasl.py``): EHLO
announces ``AUTH PLAIN LOGIN`` (the backend's mechanisms) unless AUTH needs
TLS (``smtpd_tls_auth_only``, implied by level ``encrypt``) and there is none
yet; AUTH runs the exchange with ``334`` challenges, ``*`` aborts it, and the
replies and their order of checks are smtpd_sasl_proto.c's. A session that
authenticated is ``permit_sasl_authenticated`` and its Received protocol
gains the "A" (ESMTPSA). ``AUTH=`` on MAIL FROM is accepted (once), as
Postfix does, and not used further.

anvil (``anvil.py``): a new connection is counted before the banner and gets
``421 4.7.0 HOST Error: too many connections from IP`` over
smtpd_client_connection_count_limit or _rate_limit; MAIL, RCPT and AUTH are
counted against smtpd_client_message_rate_limit, _recipient_rate_limit and
_auth_rate_limit (``450 4.7.1 Error: too much mail from IP``, ...). Clients in
smtpd_client_event_limit_exceptions are never counted.

Restrictions (``smtpd_check.py``, through the handler): with
``smtpd_delay_reject = no`` the client list answers instead of the banner
(and every later command but QUIT hears ``503 5.7.0 Error: access denied
for NAME[IP]``), the HELO list answers HELO/EHLO, the sender list MAIL;
smtpd_data_restrictions answer DATA before the 354. Input waiting behind a
command where pipelining is not allowed flags the session for
reject_unauth_pipelining, as smtpd_flag_ill_pipelining does.

PROXY protocol (``smtpd_upstream_proxy_protocol = haproxy``): aiosmtpd reads
the v1/v2 header within ``smtpd_upstream_proxy_timeout`` before anything is
said (a missing or garbled header closes the connection without a word) and
the handler's ``handle_PROXY`` takes the client address from it; in wrapper
mode the header comes first, then the TLS handshake.

Postfix parameters: message_size_limit, line_length_limit, smtpd_timeout,
smtpd_banner, smtpd_hard_error_limit, smtpd_soft_error_limit,
smtpd_error_sleep_time, smtpd_recipient_overshoot_limit,
smtpd_forbid_bare_newline, smtpd_helo_required, smtpd_peername_lookup,
smtpd_tls_security_level, smtpd_tls_wrappermode, smtpd_starttls_timeout,
smtpd_upstream_proxy_protocol, smtpd_upstream_proxy_timeout,
smtpd_sasl_auth_enable, smtpd_tls_auth_only, smtpd_client_connection_count_limit,
smtpd_client_connection_rate_limit, smtpd_client_message_rate_limit,
smtpd_client_recipient_rate_limit, smtpd_client_auth_rate_limit,
smtpd_tls_loglevel, smtputf8_enable, notify_classes and
smtpd_history_flush_threshold.

Relies on aiosmtpd 1.4.x internals (``_smtp_methods``, ``_handler_coroutine``,
``_timeout_handle``, ``_reader``, ``_writer``); pin the minor version.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal

from aiosmtpd.smtp import MISSING, SMTP

from postfleet.core.maillog import maillog_event
from postfleet.core.smtp import replies
from postfleet.core.smtp.hooks import HookNames
from postfleet.core.smtp.replies import SmtpReply, about
from postfleet.ingress_smtp.anvil import Event, FleetAnvil
from postfleet.ingress_smtp.counts import CommandCounts
from postfleet.ingress_smtp.grammar import (
    MailParams,
    bdat_arguments,
    envelope_path,
    etrn_site,
    mail_parameters,
    postfix_text,
    rcpt_parameters,
    reply_line,
)
from postfleet.ingress_smtp.metrics import (
    CONNECTIONS,
    POSTFIX_CONNECTS,
    POSTFIX_DISCONNECTS,
    REJECTS,
    SESSIONS,
)
from postfleet.ingress_smtp.peername import NameLookup, system_client_name
from postfleet.ingress_smtp.sasl import SaslBackend, Step
from postfleet.ingress_smtp.session import IngressEnvelope, IngressSession
from postfleet.ingress_smtp.settings import SmtpdParams
from postfleet.ingress_smtp.tls import (
    MUST_STARTTLS,
    STARTTLS_READY,
    STARTTLS_SYNTAX,
    TLS_ALREADY_ACTIVE,
    ServerTls,
    tls_facts,
    tls_summary,
)

log = logging.getLogger(__name__)

_TIMER_RESET_EVERY = 1.0  # seconds between idle-timer resets while DATA streams in
# Postfix's commands without SMTPD_CMD_FLAG_PRE_TLS that this server knows:
# refused with 530 5.7.0 before STARTTLS at smtpd_tls_security_level = encrypt.
_NEED_TLS = frozenset({"MAIL", "RCPT", "DATA", "BDAT", "RSET", "VRFY", "ETRN", "AUTH"})
# ETRN's answer from the flush service (qmgr): True queuing started, False
# the site is not one it flushes (fast_flush_domains), None unreachable.
FlushSite = Callable[[str], Awaitable[bool | None]]
_SKIP_PIECE = 64 * 1024  # bytes read at a time from a BDAT chunk
_BARE_LF = re.compile(rb"(?<!\r)\n")
# Postmaster transcripts being sent (kept referenced until done).
_NOTICES: set[asyncio.Task[None]] = set()
# Postfix's SMTPD_CMD_FLAG_LAST: nothing may be pipelined behind these.
_LAST_IN_GROUP = frozenset({"HELO", "EHLO", "STARTTLS", "AUTH", "DATA", "NOOP", "VRFY", "QUIT"})


class IngressSMTP(HookNames, SMTP):
    """One SMTP session, Postfix-flavoured."""

    def __init__(
        self,
        handler: Any,
        *,
        params: SmtpdParams,
        myhostname: str,
        listener: str,
        sessions: Sessions,
        bare_newline_exempt: Callable[[str], bool] = lambda ip: False,
        tls: ServerTls | None = None,
        name_lookup: NameLookup = system_client_name,
        sasl: SaslBackend | None = None,
        anvil: FleetAnvil | None = None,
        limits_exempt: Callable[[str], bool] = lambda ip: False,
        flush_site: FlushSite | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        limit = params.line_length_limit
        # Read by SMTP.__init__ (stream limit) and the command loop.
        self.line_length_limit = limit
        self.command_size_limit = limit
        self.command_size_limits = collections.defaultdict(lambda: limit)
        self.params = params
        self.myhostname = myhostname
        self.listener = listener
        self.draining = False
        self._sessions = sessions
        self._bare_newline_exempt = bare_newline_exempt
        self._name_lookup = name_lookup
        self._banner = params.banner(myhostname)
        self._greeted = False
        self._busy = False
        # The listener's certificate; None when TLS is off (level none).
        self.tls = tls
        # SMTP AUTH's backend; None when smtpd_sasl_auth_enable = no.
        self.sasl = sasl if params.smtpd_sasl_auth_enable else None
        self.anvil = anvil
        self._limits_exempt = limits_exempt
        self._flush_site = flush_site
        self._anvil_client = ""  # the address anvil counted this connection for
        self._handshaking = False
        self._lost = False
        self._counts = CommandCounts()  # the disconnect line's command counts
        self._failed = False  # the running command answered 4xx/5xx
        super().__init__(
            handler,
            data_size_limit=params.message_size_limit or None,
            # Arguments decoded as UTF-8 (bytes that are not: surrogates,
            # refused as bad syntax); SMTPUTF8 itself is ours (EHLO, MAIL).
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=myhostname,
            timeout=params.smtpd_timeout,
            proxy_protocol_timeout=params.proxy_timeout(),
            loop=loop or asyncio.get_running_loop(),
        )
        self._smtp_methods = {
            name: self._guard(name, method) for name, method in self._smtp_methods.items()
        }

    # -- session bookkeeping ---------------------------------------------------
    def _create_session(self) -> IngressSession:
        return IngressSession(self.loop, self._name_lookup)

    def _create_envelope(self) -> IngressEnvelope:
        return IngressEnvelope()

    # Methods, not properties: aiosmtpd inspects every attribute in __init__.
    def smtpd_session(self) -> IngressSession:
        assert isinstance(self.session, IngressSession)
        return self.session

    def transaction(self) -> IngressEnvelope:
        assert isinstance(self.envelope, IngressEnvelope)
        return self.envelope

    @property
    def in_transaction(self) -> bool:
        return self.envelope is not None and self.envelope.mail_from is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            sockname = transport.get_extra_info("sockname")
            if isinstance(sockname, tuple) and sockname:
                self.smtpd_session().server_ip = str(sockname[0])
            self._sessions.add(self)
            CONNECTIONS.labels(self.listener).inc()
            SESSIONS.labels(self.listener).inc()
            if self.params.proxy_timeout() is None:  # else once PROXY named the client
                self.smtpd_session().start_name_lookup(self.params.smtpd_peername_lookup)

    def _forget(self) -> None:
        """The session is over: out of the live set and anvil's count (once)."""
        if self in self._sessions:
            self._sessions.discard(self)
            SESSIONS.labels(self.listener).dec()
        if self.anvil is not None and self._anvil_client:
            self.loop.create_task(self.anvil.disconnect(self.listener, self._anvil_client),
                                  name="anvil-disconnect")
            self._anvil_client = ""

    def connection_lost(self, error: Exception | None) -> None:
        # Once only: a failed TLS handshake may or may not report it too.
        if self._lost:
            return
        self._lost = True
        if self.session is not None:
            self.smtpd_session().cancel_lookup()
            # smtpd_milters: QUIT and close this connection's conversations.
            self.loop.create_task(self.event_handler.session_closed(self.smtpd_session()),
                                  name="smtpd-milters-close")
            if self._greeted:
                maillog_event("smtpd", f"disconnect from {self.smtpd_session().describe()} "
                                       f"{self._counts.format()}")
                POSTFIX_DISCONNECTS.inc()
            self._chat_reset(0)
        self._forget()
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        keep_open = super().eof_received()
        if not self._greeted:
            # Gone before the PROXY header was read (a load balancer's health
            # check): aiosmtpd's command loop, which closes on EOF, never started.
            self.hang_up(None)
            return False
        return keep_open

    # -- replies -----------------------------------------------------------------
    async def push(self, status: Any) -> None:
        text = status.decode("ascii", "replace") if isinstance(status, bytes) else str(status)
        if not self._greeted and text.startswith("220"):
            # aiosmtpd's greeting: the PROXY header (if any) has been read; in
            # wrapper mode the TLS handshake comes before the banner.
            self._greeted = True
            await self.smtpd_session().resolved_name()
            maillog_event("smtpd", f"connect from {self.smtpd_session().describe()}")
            POSTFIX_CONNECTS.inc()
            if self.params.smtpd_tls_wrappermode and not await self._wrapper_handshake():
                return
            if not await self._admit():
                return
            text = f"220 {self._banner}"
            refusal = await self.event_handler.check_connect(self.smtpd_session())
            if refusal is not None:  # smtpd_delay_reject = no: instead of the banner
                self.smtpd_session().access_denied = refusal
                text = reply_line(refusal)
        text = postfix_text(text)
        self.smtpd_session().transcript.reply(text)
        code, final = text[:3], text[3:4] != "-"
        failing = code[:1] in ("4", "5")
        session = self.smtpd_session()
        self._failed = self._failed or failing
        if failing and code in ("500", "502") and not self._busy:
            self._counts.count("unknown", False)  # not a command smtpd knows
        if failing:
            REJECTS.labels(self.listener, code).inc()
            if self._counts_as_error(text):
                session.error_count += 1
        if final and session.error_count >= self.params.smtpd_soft_error_limit:
            await asyncio.sleep(self.params.smtpd_error_sleep_time)
        await super().push(text)
        if failing and code != "421" and session.error_count >= self.params.smtpd_hard_error_limit:
            log.info("too many errors from %s", session.describe())
            self.hang_up(replies.TOO_MANY_ERRORS)

    # -- anvil -------------------------------------------------------------------------
    def _counted(self, ip: str) -> bool:
        return self.anvil is not None and bool(ip) and not self._limits_exempt(ip)

    async def _admit(self) -> bool:
        """Count the connection; False (421 sent, session closing) over a limit."""
        ip = self.smtpd_session().client_ip
        if self.anvil is None or not self._counted(ip):
            return True
        self._anvil_client = ip
        counted = await self.anvil.connect(self.listener, ip)
        if counted is None:
            return True
        count, rate = counted
        for what, value, limit in (
                ("concurrency", count, self.params.smtpd_client_connection_count_limit),
                ("rate", rate, self.params.smtpd_client_connection_rate_limit)):
            if limit and value > limit:
                maillog_event("smtpd", f"warning: Connection {what} limit exceeded: {value} "
                              f"from {self.smtpd_session().describe()} for service "
                              f"{self.listener}", level=logging.WARNING)
                self.hang_up(about(replies.TOO_MANY_CONNECTIONS, ip))
                return False
        return True

    async def _over_rate(self, event: Event, limit: int, refusal: SmtpReply,
                         what: str) -> bool:
        """Count a MAIL, RCPT or AUTH; True (and the 450 sent) over its limit."""
        ip = self.smtpd_session().client_ip
        if not limit or self.anvil is None or not self._counted(ip):
            return False
        rate = await self.anvil.event(event, self.listener, ip)
        if rate is None or rate <= limit:
            return False
        maillog_event("smtpd", f"warning: {what} rate limit exceeded: {rate} from "
                      f"{self.smtpd_session().describe()} for service {self.listener}",
                      level=logging.WARNING)
        await self.reply(about(refusal, ip))
        return True

    def _counts_as_error(self, text: str) -> bool:
        if text.startswith("421") or text.startswith(reply_line(replies.QUEUE_UNAVAILABLE)):
            return False
        if text.startswith(reply_line(replies.TOO_MANY_RECIPIENTS)):
            return self.smtpd_session().rcpt_overshoot > self.params.smtpd_recipient_overshoot_limit
        return True

    async def reply(self, reply: SmtpReply) -> None:
        await self.push(reply_line(reply))

    def hang_up(self, reply: SmtpReply | None) -> None:
        """Send a 421 naming this server (if given) and close the session; safe
        from any context, including the session's own command."""
        transport = self.transport
        if reply is not None and self.session is not None:
            self.smtpd_session().transcript.reason = reply.text
        # Duck-typed: uvloop's transports are not asyncio's transport classes.
        if transport is not None and not transport.is_closing():
            if reply is not None and self._may_speak():
                line = reply_line(reply.with_text(f"{self.myhostname} {reply.text}"))
                REJECTS.labels(self.listener, str(reply.code)).inc()
                transport.write(line.encode("ascii") + b"\r\n")  # type: ignore[attr-defined]
            transport.close()
        elif transport is None or transport.is_closing():
            # Already closed (the client went first): an event loop need not
            # report connection_lost again, so the session is forgotten here
            # or a drain would wait for it until its deadline.
            self._forget()
        task = self._handler_coroutine
        if task is not None and not task.done():
            task.cancel()

    def _may_speak(self) -> bool:
        """False while plaintext must not be written: mid-handshake, or before
        the wrapper-mode handshake."""
        if self._handshaking:
            return False
        return not (self.params.smtpd_tls_wrappermode and self.smtpd_session().ssl is None)

    def _timeout_cb(self) -> None:
        if not self._greeted and self.params.proxy_timeout() is not None:
            # No PROXY header in time (smtpd_upstream_proxy_timeout): just close.
            log.info("haproxy: no PROXY header from %s within %ss",
                     self.smtpd_session().describe(), self.params.smtpd_upstream_proxy_timeout)
            self.hang_up(None)
            return
        log.info("timeout after %s from %s", self.params.smtpd_timeout,
                 self.smtpd_session().describe())
        self.hang_up(replies.TIMEOUT_EXCEEDED)

    # -- TLS ---------------------------------------------------------------------
    def _tls_missing(self) -> bool:
        """smtpd_tls_security_level = encrypt and no STARTTLS yet."""
        return self.params.tls_level() == "encrypt" and self.smtpd_session().ssl is None

    def _offers_starttls(self) -> bool:
        return self.tls is not None and self.smtpd_session().ssl is None

    async def _wrapper_handshake(self) -> bool:
        assert self.tls is not None  # wrapper mode requires a certificate (settings)
        return await self._start_tls(self.tls.context())

    async def _start_tls(self, context: ssl.SSLContext) -> bool:
        """The TLS handshake; False: it failed and, as in Postfix, the session is over."""
        session = self.smtpd_session()
        writer = self._writer
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()  # smtpd_starttls_timeout applies instead
        self._handshaking = True
        try:
            await writer.start_tls(
                context, ssl_handshake_timeout=self.params.smtpd_starttls_timeout)
        except asyncio.CancelledError:
            self.connection_lost(None)
            raise
        except Exception as exc:  # SSL errors, resets, the handshake time limit
            log.info("SSL_accept error from %s: %s", session.describe(),
                     str(exc) or type(exc).__name__)
            self.connection_lost(exc)
            return False
        finally:
            self._handshaking = False
        self.transport = writer.transport
        session.ssl = tls_summary(writer.get_extra_info("ssl_object"))
        self._reset_timeout()
        if self.params.smtpd_tls_loglevel >= 1:
            maillog_event("smtpd", f"Anonymous TLS connection established from "
                          f"{session.describe()}: {tls_facts(session.ssl)}")
        return True

    def _discard_pipelined(self, command: str) -> None:
        """Plaintext sent after STARTTLS must never be read as if it came under
        TLS (CVE-2011-0411): Postfix purges it, and so do we."""
        buffered: bytearray = self._reader._buffer  # type: ignore[attr-defined]
        if buffered:
            log.info("improper command pipelining after %s from %s: %r", command,
                     self.smtpd_session().describe(), bytes(buffered[:100]))
            buffered.clear()

    # -- drain -------------------------------------------------------------------
    def begin_drain(self) -> None:
        """Stop taking new transactions; idle sessions are closed now."""
        self.draining = True
        if not self._busy and not self.in_transaction:
            self.hang_up(replies.SHUTTING_DOWN)

    def _guard(
        self, name: str, method: Callable[[str | None], Awaitable[None]]
    ) -> Callable[[str | None], Awaitable[None]]:
        async def run(arg: str | None) -> None:
            if self.draining and name != "QUIT" and not self.in_transaction:
                self.hang_up(replies.SHUTTING_DOWN)
                return
            session = self.smtpd_session()
            session.transcript.command(name, arg)
            if session.access_denied is not None and name != "QUIT":
                await self.reply(about(replies.ACCESS_DENIED, session.describe()))
                return
            if name in _NEED_TLS and self._tls_missing():
                await self.reply(MUST_STARTTLS)
                return
            self._flag_pipelining(name)
            self._busy = True
            self._failed = False
            try:
                await method(arg)
            finally:
                self._busy = False
                self._counts.count(name, not self._failed)
            if self.draining and not self.in_transaction:
                self.hang_up(replies.SHUTTING_DOWN)

        return run

    def _flag_pipelining(self, name: str) -> None:
        """reject_unauth_pipelining's flag (smtpd_flag_ill_pipelining): input
        already waiting behind a command of a client that did not say EHLO, or
        behind a command that must end a pipelined group."""
        session = self.smtpd_session()
        if session.pipelined or not (not session.extended_smtp or name in _LAST_IN_GROUP):
            return
        waiting: bytearray = self._reader._buffer  # type: ignore[attr-defined]
        if waiting:
            session.pipelined = True
            log.info("improper command pipelining after %s from %s: %r", name,
                     session.describe(), bytes(waiting[:100]))

    # -- commands ----------------------------------------------------------------
    async def _hello(self, hostname: str | None, *, extended: bool) -> bool:
        """What HELO and EHLO share: the syntax check, then a new transaction
        and the client's name; False when the command was refused."""
        if not hostname:
            await self.reply(replies.EHLO_SYNTAX if extended else replies.HELO_SYNTAX)
            return False
        refusal = await self.event_handler.check_helo(self.smtpd_session(), hostname)
        if refusal is not None:
            await self.reply(refusal)
            return False
        self._set_rset_state()
        session = self.smtpd_session()
        session.extended_smtp = extended
        session.host_name = hostname
        return True

    async def smtp_HELO(self, hostname: str | None) -> None:
        if await self._hello(hostname, extended=False):
            await self.push(f"250 {self.myhostname}")

    async def smtp_EHLO(self, hostname: str | None) -> None:
        if not await self._hello(hostname, extended=True):
            return
        limit = self.params.message_size_limit
        # smtpd.c ehlo_cmd's order.
        lines = [
            self.myhostname, "PIPELINING", f"SIZE {limit}" if limit else "SIZE", "VRFY",
            "ETRN",
            *(["STARTTLS"] if self._offers_starttls() else []),
            *await self._auth_keyword(),
            "ENHANCEDSTATUSCODES", "8BITMIME", "DSN",
            *(["SMTPUTF8"] if self.params.smtputf8_enable else []),
            "CHUNKING",
        ]
        for line in lines[:-1]:
            await self.push(f"250-{line}")
        await self.push(f"250 {lines[-1]}")

    async def smtp_MAIL(self, arg: str | None) -> None:
        if self.params.smtpd_helo_required and not self.smtpd_session().host_name:
            await self.reply(replies.NEED_HELO)
            return
        if self.in_transaction:
            await self.reply(replies.NESTED_MAIL)
            return
        if self.transaction().bdat:
            await self.reply(replies.MAIL_AFTER_BDAT)
            return
        if await self._over_rate("mail", self.params.smtpd_client_message_rate_limit,
                                 replies.TOO_MUCH_MAIL, "Message delivery request"):
            return
        path = await self._envelope_argument(arg, "MAIL")
        if path is None:
            return
        address, params = path
        wanted = mail_parameters(params, self.params.message_size_limit,
                                 self.params.smtputf8_enable)
        if isinstance(wanted, SmtpReply):
            await self.reply(wanted)
            return
        self.smtpd_session().rcpt_overshoot = 0
        status = await self._call_handler_hook("MAIL", address, params)
        if status is MISSING:
            self.transaction().mail_from = address
            self.transaction().mail_options.extend(params)
            status = reply_line(replies.SENDER_OK)
        if self.in_transaction:
            self._keep_mail_params(wanted)
        await self.push(status)

    def _keep_mail_params(self, wanted: MailParams) -> None:
        envelope = self.transaction()
        envelope.smtp_utf8 = wanted.smtputf8
        envelope.ret, envelope.envid = wanted.ret, wanted.envid

    async def _envelope_argument(
        self, arg: str | None, command: Literal["MAIL", "RCPT"]
    ) -> tuple[str, list[str]] | None:
        """MAIL's or RCPT's address and parameters; None once it is refused."""
        path = envelope_path(arg, command)
        if isinstance(path, SmtpReply):
            await self.reply(path)
            return None
        return path

    async def smtp_RCPT(self, arg: str | None) -> None:
        if not self.in_transaction:
            await self.reply(replies.NEED_MAIL)
            return
        if self.transaction().bdat:
            await self.reply(replies.RCPT_AFTER_BDAT)
            return
        if await self._over_rate("rcpt", self.params.smtpd_client_recipient_rate_limit,
                                 replies.TOO_MANY_RCPTS_FROM, "Recipient address"):
            return
        path = await self._envelope_argument(arg, "RCPT")
        if path is None:
            return
        address, params = path
        wanted = rcpt_parameters(params)
        if isinstance(wanted, SmtpReply):
            await self.reply(wanted)
            return
        envelope = self.transaction()
        before = len(envelope.rcpt_tos)
        status = await self._call_handler_hook("RCPT", address, params)
        if status is MISSING:
            envelope.rcpt_tos.append(address)
            status = reply_line(replies.RCPT_OK)
        if len(envelope.rcpt_tos) > before:  # accepted: keep its NOTIFY and ORCPT
            envelope.dsn.append(wanted)
        await self.push(status)

    async def smtp_DATA(self, arg: str | None) -> None:
        if self.transaction().bdat:
            await self.reply(replies.DATA_AFTER_BDAT)
            return
        if not self.transaction().rcpt_tos:
            await self.reply(replies.NEED_RECIPIENTS if self.in_transaction
                             else replies.NEED_RCPT)
            return
        if arg:
            await self.reply(replies.DATA_SYNTAX)
            return
        refusal = await self.event_handler.check_data(self.smtpd_session(), self.transaction())
        if refusal is not None:
            await self.reply(refusal)
            return
        await self.reply(replies.DATA_GO)
        result = await self._read_content()
        if result is None:
            return  # the session is gone
        body, problem = result
        if problem is not None:
            self._set_post_data_state()
            await self.reply(problem)
            return
        await self.push(await self._submit(body))

    async def _submit(self, body: bytes) -> str:
        """End of data (DATA, or BDAT LAST): hand the message on; the reply."""
        self.transaction().original_content = body
        self.transaction().content = body
        # Waiting for cleanup is not client idle time (smtpd_timeout is for I/O).
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            if self.transport is not None:
                self._reset_timeout()
            self._set_post_data_state()
        self._chat_reset(self.params.smtpd_history_flush_threshold)
        return reply_line(replies.OK) if status is MISSING else str(status)

    def _chat_reset(self, threshold: int) -> None:
        """Postfix's chat_reset: past ``threshold`` lines the transcript starts
        afresh, and goes to the postmaster first when it had errors of a
        class in notify_classes."""
        kept = self.smtpd_session().transcript
        if len(kept.lines) <= threshold:
            return
        taken = kept.take(set(self.params.notify_classes))
        if taken is not None:
            task = self.loop.create_task(self.event_handler.notify_postmaster(
                self.smtpd_session().describe(), *taken), name="smtpd-notify")
            _NOTICES.add(task)
            task.add_done_callback(_NOTICES.discard)

    def _bare_newline_mode(self) -> str:
        """smtpd_forbid_bare_newline for this client (its exclusions say "no")."""
        mode = self.params.smtpd_forbid_bare_newline
        if mode != "no" and self._bare_newline_exempt(self.smtpd_session().client_ip):
            mode = "no"
        return mode

    async def _read_content(self) -> tuple[bytes, SmtpReply | None] | None:
        """Read DATA up to <CR><LF>.<CR><LF>: (dot-unstuffed bytes, refusal)."""
        mode = self._bare_newline_mode()
        limit = self.params.message_size_limit
        parts: list[bytes] = []
        size = 0
        too_big = False
        line_start = True  # the next piece begins a line
        after_crlf = True  # the previous line ended in <CR><LF> (DATA counts)
        prev_tail = b""  # last byte of the previous piece of a long line
        reader = self._reader
        last_reset = self.loop.time()
        while True:
            try:
                piece: bytes = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as exc:
                piece = await reader.read(exc.consumed)  # part of a long line
            except asyncio.IncompleteReadError:
                self.hang_up(None)
                return None
            if self.loop.time() - last_reset > _TIMER_RESET_EVERY:
                self._reset_timeout()
                last_reset = self.loop.time()
            if line_start and after_crlf and piece == b".\r\n":
                break
            complete = piece.endswith(b"\n")
            crlf = piece.endswith(b"\r\n") or (
                piece == b"\n" and not line_start and prev_tail == b"\r"
            )
            if complete and not crlf:
                if mode == "reject":
                    await self.reply(replies.BARE_LF_REJECTED)
                    self.hang_up(None)
                    return None
                if mode == "normalize":
                    piece = piece[:-1] + b"\r\n"
            if line_start and piece.startswith(b"."):
                piece = piece[1:]
            size += len(piece)
            if limit and size > limit and not too_big:
                too_big = True
                parts.clear()  # keep reading to the end, keep nothing
            if not too_big:
                parts.append(piece)
            line_start, after_crlf = (True, crlf) if complete else (False, after_crlf)
            prev_tail = b"" if complete else piece[-1:]
        if too_big:
            return b"", replies.SIZE_EXCEEDED
        return b"".join(parts), None

    # -- BDAT (RFC 3030) ------------------------------------------------------------
    async def smtp_BDAT(self, arg: str | None) -> None:
        parsed = bdat_arguments(arg)
        if parsed is None:
            await self.reply(replies.BDAT_SYNTAX)
            self.hang_up(None)  # a 521 ends the session
            return
        size, last = parsed
        envelope = self.transaction()
        if size == 0 and not last:
            await self._skip_bdat(size, last, replies.NULL_BDAT)
            return
        if envelope.bdat_error:
            await self._skip_bdat(size, last, about(replies.BDAT_DISCARDED,
                                                    f"{size} bytes after earlier error"))
            return
        if not envelope.bdat:
            refusal = await self._before_content()
            if refusal is not None:
                await self._skip_bdat(size, last, refusal)
                return
        limit = self.params.message_size_limit
        if limit and envelope.bdat_size + size > limit:
            await self._skip_bdat(size, last, replies.BDAT_TOO_BIG)
            return
        envelope.bdat = True
        chunk = await self._read_chunk(size, keep=True)
        if chunk is None:
            return  # the session is gone
        envelope.bdat_parts.append(chunk)
        envelope.bdat_size += size
        if not last:
            await self.reply(replies.chunk_ok(size))
            return
        body = await self._bdat_content(b"".join(envelope.bdat_parts))
        if body is not None:
            await self.push(await self._submit(body))

    async def _before_content(self) -> SmtpReply | None:
        """What DATA checks before its 354, for the first BDAT chunk."""
        envelope = self.transaction()
        if not envelope.rcpt_tos:
            return replies.NEED_RECIPIENTS if self.in_transaction else replies.NEED_RCPT
        return await self.event_handler.check_data(self.smtpd_session(), envelope)

    async def _skip_bdat(self, size: int, last: bool, reply: SmtpReply) -> None:
        """Read and drop a chunk, answer ``reply``; then the transaction ends
        (LAST) or later chunks are dropped too until LAST or RSET (Postfix's
        skip_bdat). A chunk far over message_size_limit is not read at all:
        the session ends after the reply."""
        limit = self.params.message_size_limit
        flood = bool(limit) and size > limit * 1.5
        if not flood and await self._read_chunk(size, keep=False) is None:
            return
        await self.reply(reply)
        if flood:
            self.hang_up(None)
        elif last:
            self._set_rset_state()
        else:
            envelope = self.transaction()
            envelope.bdat = envelope.bdat_error = True
            envelope.bdat_parts.clear()

    async def _read_chunk(self, size: int, *, keep: bool) -> bytes | None:
        """Exactly ``size`` bytes of BDAT content (kept, or read and dropped);
        None when the client went away. The idle timer restarts as it flows."""
        parts: list[bytes] = []
        left = size
        while left:
            try:
                piece: bytes = await self._reader.readexactly(min(left, _SKIP_PIECE))
            except (asyncio.IncompleteReadError, ConnectionError):
                self.hang_up(None)
                return None
            left -= len(piece)
            self._reset_timeout()
            if keep:
                parts.append(piece)
        return b"".join(parts)

    async def _bdat_content(self, raw: bytes) -> bytes | None:
        """The whole BDAT content as stored (CRLF lines; nothing to unstuff):
        a bare <LF> is a line end under smtpd_forbid_bare_newline = normalize
        and ends the session under reject, as in DATA; None then."""
        mode = self._bare_newline_mode()
        if mode != "no" and _BARE_LF.search(raw):
            if mode == "reject":
                await self.reply(replies.BARE_LF_REJECTED)
                self.hang_up(None)
                return None
            raw = _BARE_LF.sub(b"\r\n", raw)
        if raw and not raw.endswith(b"\n"):
            raw += b"\r\n"  # the last line ends here, as Postfix's last record does
        return raw

    # -- ETRN --------------------------------------------------------------------------
    async def smtp_ETRN(self, arg: str | None) -> None:
        if self.params.smtpd_helo_required and not self.smtpd_session().host_name:
            await self.reply(replies.ETRN_NEED_HELO)
            return
        if self.in_transaction:
            await self.reply(replies.ETRN_IN_TRANSACTION)
            return
        site = etrn_site(arg)
        if isinstance(site, SmtpReply):
            await self.reply(site)
            return
        started = await self._flush_site(site) if self._flush_site is not None else None
        if started:
            await self.reply(replies.ETRN_STARTED)
            return
        client = self.smtpd_session().describe()
        if started is False:
            maillog_event("smtpd", f"warning: reject: ETRN {site[:100]}... from {client}",
                          level=logging.WARNING)
            await self.reply(replies.ETRN_DENIED.with_text(
                f"<{site}>: {replies.ETRN_DENIED.text}"))
            return
        maillog_event("smtpd", "warning: unable to talk to fast flush service",
                      level=logging.WARNING)
        await self.reply(replies.ETRN_UNABLE)

    async def smtp_RSET(self, arg: str | None) -> None:
        self._set_rset_state()
        await self.reply(replies.RESET_OK)

    async def smtp_NOOP(self, arg: str | None) -> None:
        await self.reply(replies.NOOP_OK)

    async def smtp_QUIT(self, arg: str | None) -> None:
        await self.reply(replies.BYE)
        self.hang_up(None)

    async def smtp_VRFY(self, arg: str | None) -> None:
        if not arg:
            await self.reply(replies.VRFY_SYNTAX)
            return
        await self.reply(replies.VRFY_ANSWER.with_text(arg))

    async def smtp_HELP(self, arg: str | None) -> None:
        await self.reply(replies.UNKNOWN_COMMAND)

    async def smtp_EXPN(self, arg: str | None) -> None:
        await self.reply(replies.UNKNOWN_COMMAND)

    # -- SMTP AUTH ------------------------------------------------------------------
    def _sasl_active(self) -> bool:
        """Postfix's smtpd_sasl_is_active: enabled, and TLS on if AUTH needs it."""
        return self.sasl is not None and (
            self.smtpd_session().ssl is not None or not self.params.auth_needs_tls())

    async def _auth_keyword(self) -> list[str]:
        if self.sasl is None or not self._sasl_active():
            return []
        mechanisms = await self.sasl.mechanisms()
        return [f"AUTH {' '.join(mechanisms)}"] if mechanisms else []

    async def smtp_AUTH(self, arg: str | None) -> None:
        session = self.smtpd_session()
        if await self._over_rate("auth", self.params.smtpd_client_auth_rate_limit,
                                 replies.TOO_MANY_AUTH, "AUTH command"):
            return
        if self.params.smtpd_helo_required and not session.host_name:
            refusal = replies.NEED_HELO
        elif self.sasl is None or not self._sasl_active():
            refusal = replies.AUTH_NOT_ENABLED
        elif self.in_transaction:
            refusal = replies.AUTH_IN_TRANSACTION
        elif session.sasl_username:
            refusal = replies.ALREADY_AUTHENTICATED
        elif not arg or len(arg.split()) > 2:
            refusal = replies.AUTH_SYNTAX
        else:
            mechanism, *initial = arg.split()
            await self._sasl_exchange(self.sasl, mechanism, initial[0] if initial else None)
            return
        await self.reply(refusal)

    async def _sasl_exchange(
        self, sasl: SaslBackend, mechanism: str, initial: str | None
    ) -> None:
        session = self.smtpd_session()
        server_ip = ""
        sockname = self.transport.get_extra_info("sockname") if self.transport else None
        if isinstance(sockname, tuple) and sockname:
            server_ip = str(sockname[0])
        exchange = sasl.exchange(client_ip=session.client_ip, server_ip=server_ip,
                                 secured=session.ssl is not None)
        try:
            step = await exchange.first(mechanism, initial)
            while step.status == "more":
                await self.push(f"334 {step.text}")
                response = await self._sasl_response()
                if response is None:
                    return  # the session is gone
                if isinstance(response, SmtpReply):
                    await self.reply(response)
                    return
                if response == "*":
                    maillog_event("smtpd", f"warning: {session.describe()}: SASL {mechanism} "
                                  "authentication aborted", level=logging.WARNING)
                    await self.reply(replies.AUTH_ABORTED)
                    return
                step = await exchange.next(response)
        finally:
            await exchange.close()
        await self._auth_outcome(mechanism, step)

    async def _auth_outcome(self, mechanism: str, step: Step) -> None:
        session = self.smtpd_session()
        if step.status == "done":
            session.sasl_username = step.username
            session.sasl_method = mechanism.upper()
            await self.reply(replies.AUTH_OK)
            return
        reason = step.text or "(reason unavailable)"
        maillog_event("smtpd", f"warning: {session.describe()}: SASL {mechanism.upper()} "
                      f"authentication failed: {reason}, sasl_username="
                      f"{step.username or '(unavailable)'}", level=logging.WARNING)
        base = replies.AUTH_TEMPFAIL if step.status == "temp" else replies.AUTH_FAILED
        await self.reply(about(base, reason, ": "))

    async def _sasl_response(self) -> str | SmtpReply | None:
        """One line of the client's SASL exchange; a refusal when it is too
        long; None when the client is gone."""
        reader = self._reader
        too_long = False
        try:
            async with asyncio.timeout(self.params.smtpd_timeout):
                while True:
                    try:
                        raw: bytes = await reader.readuntil(b"\n")
                        break
                    except asyncio.LimitOverrunError as exc:
                        too_long = True
                        await reader.read(exc.consumed)  # skip to the line's end
        except TimeoutError:
            self.hang_up(replies.TIMEOUT_EXCEEDED)
            return None
        except (asyncio.IncompleteReadError, ConnectionError):
            self.hang_up(None)
            return None
        self._reset_timeout()
        if too_long:
            return replies.SASL_RESPONSE_TOO_LONG
        return raw.decode("ascii", "replace").rstrip("\r\n")

    async def smtp_STARTTLS(self, arg: str | None) -> None:
        session = self.smtpd_session()
        if arg:
            await self.reply(STARTTLS_SYNTAX)
            return
        if session.ssl is not None:
            await self.reply(TLS_ALREADY_ACTIVE)
            return
        if self.tls is None:
            await self.reply(replies.NOT_IMPLEMENTED)
            return
        context = self.tls.context()
        await self.reply(STARTTLS_READY)
        self._discard_pipelined("STARTTLS")
        # RFC 3207 4.2 (Postfix: helo_reset, mail_reset, rcpt_reset).
        self._set_rset_state()
        session.forget_helo()
        await self._start_tls(context)


class Sessions:
    """The live sessions of the listeners, for drain."""

    def __init__(self) -> None:
        self._live: set[IngressSMTP] = set()
        self.empty = asyncio.Event()
        self.empty.set()

    def add(self, session: IngressSMTP) -> None:
        self._live.add(session)
        self.empty.clear()

    def discard(self, session: IngressSMTP) -> None:
        self._live.discard(session)
        if not self._live:
            self.empty.set()

    def __contains__(self, session: object) -> bool:
        return session in self._live

    def __iter__(self) -> Iterator[IngressSMTP]:
        return iter(list(self._live))

    def __len__(self) -> int:
        return len(self._live)
