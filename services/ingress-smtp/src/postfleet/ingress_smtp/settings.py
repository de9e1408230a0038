"""ingress-smtp settings: Postfix smtpd(8) parameters with Postfix's defaults.

Postfix parameters: myhostname (CommonSettings), message_size_limit,
smtpd_recipient_limit, smtpd_recipient_overshoot_limit, smtpd_timeout,
smtpd_banner, mail_name, smtpd_hard_error_limit, smtpd_soft_error_limit,
smtpd_error_sleep_time, line_length_limit, smtpd_forbid_bare_newline,
smtpd_forbid_bare_newline_exclusions, smtpd_helo_required,
smtpd_peername_lookup, smtpd_client_restrictions, smtpd_helo_restrictions,
smtpd_sender_restrictions, smtpd_relay_restrictions,
smtpd_recipient_restrictions, smtpd_data_restrictions,
smtpd_end_of_data_restrictions, smtpd_delay_reject, smtpd_sender_login_maps,
smtpd_tls_security_level, smtpd_tls_cert_file,
smtpd_tls_key_file, smtpd_tls_protocols, smtpd_tls_mandatory_protocols,
smtpd_tls_wrappermode, smtpd_starttls_timeout, smtpd_upstream_proxy_protocol,
smtpd_upstream_proxy_timeout, smtpd_sasl_auth_enable, smtpd_sasl_type,
smtpd_sasl_path, smtpd_sasl_service, smtpd_tls_auth_only,
smtpd_sasl_authenticated_header, smtpd_client_connection_count_limit,
smtpd_client_connection_rate_limit, smtpd_client_message_rate_limit,
smtpd_client_recipient_rate_limit, smtpd_client_auth_rate_limit,
smtpd_client_event_limit_exceptions, anvil_rate_time_unit,
smtpd_tls_received_header, smtpd_tls_loglevel, content_filter,
receive_override_options, smtputf8_enable, notify_classes,
error_notice_recipient, bounce_notice_recipient, double_bounce_sender,
smtpd_history_flush_threshold (the postmaster's session transcripts,
transcript.py), smtpd_milters, milter_protocol, milter_default_action,
milter_connect_timeout, milter_command_timeout, milter_content_timeout,
milter_connect_macros, milter_helo_macros, milter_mail_macros,
milter_rcpt_macros, milter_data_macros, milter_end_of_header_macros,
milter_end_of_data_macros, milter_macro_daemon_name (``MilterParams``,
postfleet.core.milter); postfleet's own: smtpd_authentication_checks,
smtpd_spf_reject_fail, smtpd_dmarc_reject_failures (authcheck.py),
content_filter_domains, cleanup_timeout,
drain_timeout, dns_nameservers (the resolver smtpd_peername_lookup asks;
empty: the system's, as Postfix). The ``listeners`` list is master.cf: one
entry per smtpd service, each with ``overrides`` playing the part of ``-o
name=value``. Environment: ``POSTFLEET_<NAME>`` (``POSTFLEET_LISTENERS`` is
JSON); YAML: top level or the ``ingress_smtp:`` section.

TLS follows Postfix: ``smtpd_tls_security_level`` empty (the default) or
``none`` means no TLS even with a certificate configured, ``may`` offers
STARTTLS, ``encrypt`` requires it, and ``smtpd_tls_wrappermode = yes`` (the
smtps listener) speaks TLS from the first byte. Unlike Postfix, which logs a
warning and carries on without TLS, a level or wrapper mode that needs a
certificate refuses to start without ``smtpd_tls_cert_file``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from postfleet.core.milter.settings import MilterParams
from postfleet.core.nameservers import check_nameservers
from postfleet.core.notices import (
    DEFAULT_NOTIFY_CLASSES,
    DOUBLE_BOUNCE,
    POSTMASTER,
    NotifyClasses,
)
from postfleet.core.postfix_list import PostfixList
from postfleet.core.settings import CommonSettings
from postfleet.core.timeparse import Seconds
from postfleet.ingress_smtp.restrictions import (
    DEFAULT_RELAY_RESTRICTIONS,
    check_no_open_relay,
    parse_network,
)
from postfleet.ingress_smtp.sasl import parse_dovecot_path
from postfleet.ingress_smtp.smtpd_check import LIST_PARAMETERS, validate
from postfleet.ingress_smtp.tls import protocol_range

MAIL_NAME = "postfleet"


def _bare_newline(value: object) -> object:
    # Postfix 3.9: "yes" is a synonym for "normalize".
    text = str(value).strip().lower()
    return "normalize" if text == "yes" else text


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


BareNewline = Annotated[
    Literal["normalize", "reject", "no"], BeforeValidator(_bare_newline)
]
TlsLevel = Annotated[Literal["", "none", "may", "encrypt"], BeforeValidator(_lower)]
# Postfix's default is "cyrus", which postfleet does not have; "builtin" is
# postfleet's own user table (postfleet.core.sasl_users).
SaslType = Annotated[Literal["builtin", "dovecot"], BeforeValidator(_lower)]
ProxyProtocol = Annotated[Literal["", "haproxy"], BeforeValidator(_lower)]
KEY_FILE_DEFAULT = "$smtpd_tls_cert_file"
# Postfix's receive_override_options values.
RECEIVE_OVERRIDE_OPTIONS = frozenset({
    "no_unknown_recipient_checks", "no_address_mappings", "no_header_body_checks",
    "no_milters",
})


class SmtpdParams(MilterParams):
    """The per-session parameters; a listener may override any of them (-o)."""

    # Bytes of message content; 0 = no limit.
    message_size_limit: int = Field(default=10240000, ge=0)
    smtpd_recipient_limit: int = Field(default=1000, ge=0)
    # 452 "too many recipients" replies before they count as errors.
    smtpd_recipient_overshoot_limit: int = Field(default=1000, ge=0)
    smtpd_timeout: Seconds = 300.0
    smtpd_banner: str = "$myhostname ESMTP $mail_name"
    smtpd_hard_error_limit: int = Field(default=20, ge=1)
    smtpd_soft_error_limit: int = Field(default=10, ge=1)
    smtpd_error_sleep_time: Seconds = 1.0
    # Longest command line, and the piece size of long message lines (which
    # are accepted, as Postfix does, not rejected).
    line_length_limit: int = Field(default=2048, ge=512)
    # Postfix >= 3.9 default: accept bare <LF> as a line end but end DATA only
    # at <CR><LF>.<CR><LF> (SMTP smuggling defence); "reject" answers 550 5.5.2.
    smtpd_forbid_bare_newline: BareNewline = "normalize"
    smtpd_forbid_bare_newline_exclusions: PostfixList = Field(
        default_factory=lambda: ["$mynetworks"]
    )
    smtpd_helo_required: bool = False
    smtpd_peername_lookup: bool = True
    smtpd_relay_restrictions: PostfixList = Field(
        default_factory=lambda: list(DEFAULT_RELAY_RESTRICTIONS)
    )
    smtpd_recipient_restrictions: PostfixList = Field(default_factory=list)
    # The other restriction lists (smtpd_check.py), Postfix's defaults (empty).
    smtpd_client_restrictions: PostfixList = Field(default_factory=list)
    smtpd_helo_restrictions: PostfixList = Field(default_factory=list)
    smtpd_sender_restrictions: PostfixList = Field(default_factory=list)
    smtpd_data_restrictions: PostfixList = Field(default_factory=list)
    smtpd_end_of_data_restrictions: PostfixList = Field(default_factory=list)
    # Client, HELO and sender restrictions wait for RCPT TO.
    smtpd_delay_reject: bool = True
    # sender address -> the SASL login names that may use it (lookup tables).
    smtpd_sender_login_maps: PostfixList = Field(default_factory=list)
    # TLS (tls.py). "" = none, as in Postfix: a certificate alone enables nothing.
    smtpd_tls_security_level: TlsLevel = ""
    smtpd_tls_cert_file: str = ""
    # Postfix's default: the key is in the certificate file.
    smtpd_tls_key_file: str = KEY_FILE_DEFAULT
    # Postfix's default is ">=TLSv1"; TLS 1.0/1.1 are deprecated (RFC 8996).
    smtpd_tls_protocols: str = ">=TLSv1.2"
    smtpd_tls_mandatory_protocols: str = ">=TLSv1.2"
    # smtps (port 465, RFC 8314 implicit TLS): the handshake comes before the banner.
    smtpd_tls_wrappermode: bool = False
    # The TLS handshake's time limit (Postfix: 300s, 10s under stress).
    smtpd_starttls_timeout: Seconds = 300.0
    # "haproxy": every connection starts with a PROXY v1/v2 header naming the
    # real client (a load balancer in front); it must arrive within the timeout.
    smtpd_upstream_proxy_protocol: ProxyProtocol = ""
    smtpd_upstream_proxy_timeout: Seconds = 5.0
    # SMTP AUTH (sasl.py). smtpd_sasl_path: for dovecot a UNIX socket path or
    # inet:host:port (Dovecot's auth inet_listener); for builtin the user table
    # file. Postfix's default "smtpd" names a Cyrus configuration: no default here.
    smtpd_sasl_auth_enable: bool = False
    smtpd_sasl_type: SaslType = "builtin"
    smtpd_sasl_path: str = ""
    smtpd_sasl_service: str = "smtp"
    # AUTH only under TLS; implied by smtpd_tls_security_level = encrypt (as Postfix).
    smtpd_tls_auth_only: bool = False
    # Received: gets "(Authenticated sender: NAME)".
    smtpd_sasl_authenticated_header: bool = False
    # anvil limits (anvil.py), per client and service; 0 = no limit. Postfix's
    # connection count default is half of default_process_limit (100).
    smtpd_client_connection_count_limit: int = Field(default=50, ge=0)
    smtpd_client_connection_rate_limit: int = Field(default=0, ge=0)
    smtpd_client_message_rate_limit: int = Field(default=0, ge=0)
    smtpd_client_recipient_rate_limit: int = Field(default=0, ge=0)
    smtpd_client_auth_rate_limit: int = Field(default=0, ge=0)
    smtpd_client_event_limit_exceptions: PostfixList = Field(
        default_factory=lambda: ["$mynetworks"]
    )
    # Received: gets "(using TLSv1.3 with cipher ... (256/256 bits))".
    smtpd_tls_received_header: bool = False
    # 1 and more: the mail log says which TLS protocol and cipher each session used.
    smtpd_tls_loglevel: int = Field(default=0, ge=0, le=4)
    # The content filter mail received here goes through before its
    # destinations ("transport:nexthop", as Postfix); empty: none. A
    # re-injection listener sets it empty and turns cleanup's stages off
    # with receive_override_options (no_address_mappings, ...).
    content_filter: str = ""
    # postfleet's: when set, content_filter applies only to mail with a
    # recipient in one of these domains (".example.org" for its subdomains),
    # as a Postfix check_recipient_access table answering FILTER would.
    content_filter_domains: PostfixList = Field(default_factory=list)
    receive_override_options: PostfixList = Field(default_factory=list)
    # Inbound mail authentication (authcheck.py), postfleet's own: SPF at the
    # first RCPT (Received-SPF), DKIM and DMARC at end of DATA, stamped in
    # Authentication-Results; for clients neither in mynetworks nor
    # authenticated (their mail is signed instead). Off by default, as
    # Postfix without a policy server or milter.
    smtpd_authentication_checks: bool = False
    # SPF "fail" (-all): 550 5.7.23 at RCPT instead of a tag.
    smtpd_spf_reject_fail: bool = False
    # OpenDMARC's RejectFailures: a DMARC failure under p=reject answers 550
    # 5.7.1 at end of DATA, under p=quarantine the message goes on hold;
    # otherwise only Authentication-Results tells.
    smtpd_dmarc_reject_failures: bool = False
    # RFC 6531: EHLO offers SMTPUTF8 and MAIL takes it (Postfix's default
    # at compatibility_level >= 1).
    smtputf8_enable: bool = True
    # Session transcripts to the postmaster (transcript.py): the error
    # classes that send one, to whom, from whom, and how many lines a
    # session keeps before a finished transaction starts a new transcript.
    notify_classes: NotifyClasses = Field(default_factory=lambda: list(DEFAULT_NOTIFY_CLASSES))
    error_notice_recipient: str = POSTMASTER
    bounce_notice_recipient: str = POSTMASTER
    double_bounce_sender: str = DOUBLE_BOUNCE
    smtpd_history_flush_threshold: int = Field(default=100, ge=0)

    @field_validator("content_filter")
    @classmethod
    def _filter(cls, value: str) -> str:
        value = value.strip()
        if value and ":" not in value:
            raise ValueError(f"content_filter {value!r}: need transport:nexthop")
        return value

    @field_validator("receive_override_options")
    @classmethod
    def _overrides(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - RECEIVE_OVERRIDE_OPTIONS)
        if unknown:
            raise ValueError(f"unknown receive_override_options: {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(RECEIVE_OVERRIDE_OPTIONS))})")
        return value

    @field_validator(*LIST_PARAMETERS)
    @classmethod
    def _known(cls, value: list[str], info: ValidationInfo) -> list[str]:
        return validate(info.field_name or "restrictions", value)

    @field_validator("smtpd_sender_login_maps")
    @classmethod
    def _tables(cls, value: list[str]) -> list[str]:
        for spec in value:
            if ":" not in spec:
                raise ValueError(f"{spec!r} is not a lookup table (type:name)")
        return value

    @field_validator("smtpd_forbid_bare_newline_exclusions",
                     "smtpd_client_event_limit_exceptions")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry != "$mynetworks":
                parse_network(entry)
        return value

    @field_validator("smtpd_tls_protocols", "smtpd_tls_mandatory_protocols")
    @classmethod
    def _protocols(cls, value: str) -> str:
        protocol_range(value)
        return value

    @field_validator("smtpd_starttls_timeout", "smtpd_upstream_proxy_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be more than 0s")
        return value

    @model_validator(mode="after")
    def _not_open(self) -> SmtpdParams:
        check_no_open_relay(self.smtpd_relay_restrictions, self.smtpd_recipient_restrictions)
        return self

    @model_validator(mode="after")
    def _tls_has_certificate(self) -> SmtpdParams:
        if self.tls_level() != "none" and not self.smtpd_tls_cert_file:
            why = ("smtpd_tls_wrappermode = yes" if self.smtpd_tls_wrappermode
                   else f"smtpd_tls_security_level = {self.smtpd_tls_security_level}")
            raise ValueError(f"{why} needs smtpd_tls_cert_file (and smtpd_tls_key_file)")
        return self

    @model_validator(mode="after")
    def _sasl_has_a_backend(self) -> SmtpdParams:
        if self.smtpd_sasl_auth_enable:
            if not self.smtpd_sasl_path:
                raise ValueError(
                    "smtpd_sasl_auth_enable = yes needs smtpd_sasl_path ("
                    + ("Dovecot's auth socket or inet:host:port"
                       if self.smtpd_sasl_type == "dovecot" else "the user table file") + ")")
            if self.smtpd_sasl_type == "dovecot":
                parse_dovecot_path(self.smtpd_sasl_path)
        return self

    def auth_needs_tls(self) -> bool:
        """smtpd_tls_auth_only, which smtpd_tls_security_level = encrypt implies."""
        return self.smtpd_tls_auth_only or self.tls_level() == "encrypt"

    def tls_level(self) -> Literal["none", "may", "encrypt"]:
        """Postfix's effective level: wrapper mode enforces TLS; "" means none."""
        if self.smtpd_tls_wrappermode:
            return "encrypt"
        if self.smtpd_tls_security_level == "encrypt":
            return "encrypt"
        if self.smtpd_tls_security_level == "may":
            return "may"
        return "none"

    def tls_key_path(self) -> str:
        key = self.smtpd_tls_key_file
        return self.smtpd_tls_cert_file if key in (KEY_FILE_DEFAULT, "") else key

    def tls_protocols(self) -> str:
        """smtpd_tls_mandatory_protocols when TLS is required, else smtpd_tls_protocols."""
        return (self.smtpd_tls_mandatory_protocols if self.tls_level() == "encrypt"
                else self.smtpd_tls_protocols)

    def proxy_timeout(self) -> float | None:
        """aiosmtpd's proxy_protocol_timeout: None when no PROXY header is expected."""
        if self.smtpd_upstream_proxy_protocol == "haproxy":
            return self.smtpd_upstream_proxy_timeout
        return None

    def banner(self, myhostname: str) -> str:
        return (self.smtpd_banner.replace("${myhostname}", myhostname)
                .replace("$myhostname", myhostname)
                .replace("${mail_name}", MAIL_NAME).replace("$mail_name", MAIL_NAME))


_PARAM_NAMES = frozenset(SmtpdParams.model_fields)


class Listener(BaseModel):
    """One smtpd service (a master.cf line): where it listens and its -o overrides."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    address: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)  # 0 picks a free port (tests)
    overrides: dict[str, Any] = Field(default_factory=dict)

    @field_validator("overrides")
    @classmethod
    def _overridable(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - _PARAM_NAMES)
        if unknown:
            raise ValueError(
                f"not a per-listener smtpd parameter: {', '.join(unknown)} "
                f"(allowed: {', '.join(sorted(_PARAM_NAMES))})"
            )
        return value


class IngressSettings(CommonSettings, SmtpdParams):
    config_section: ClassVar[str] = "ingress_smtp"

    # The laptop default; Kubernetes sets 0.0.0.0:25 (and 587, ...) per chart.
    listeners: list[Listener] = Field(
        default_factory=lambda: [Listener(name="smtp", address="127.0.0.1", port=2525)]
    )
    # The deadline of one gRPC Submit to cleanup (envelope + body + commit),
    # including the resend after a lost answer (submit.py), which waits for
    # a cleanup that died mid-call to be back.
    cleanup_timeout: Seconds = 60.0
    # SIGTERM: in-flight sessions get this long to finish (kept below the
    # Kubernetes default terminationGracePeriodSeconds of 30).
    drain_timeout: Seconds = 25.0
    # postfleet's (as delivery's): the DNS servers smtpd_peername_lookup asks,
    # "ip" or "ip:port" ("[ip6]:port"); empty: the system resolver
    # (getnameinfo/getaddrinfo: /etc/hosts, /etc/resolv.conf), like Postfix.
    dns_nameservers: PostfixList = Field(default_factory=list)
    # postfleet's: bind the listeners with SO_REUSEPORT so several ingress
    # processes serve the same ports (what master's shared listening socket
    # gives Postfix's smtpd processes). `run all` turns it on for its ingress
    # processes; off by default so two stray instances still collide loudly.
    ingress_reuse_port: bool = False
    # anvil's rate window (all listeners): events per this many seconds.
    anvil_rate_time_unit: Seconds = 60.0

    @field_validator("dns_nameservers")
    @classmethod
    def _nameservers(cls, value: list[str]) -> list[str]:
        return check_nameservers(value)

    @model_validator(mode="after")
    def _listeners_valid(self) -> IngressSettings:
        names = [listener.name for listener in self.listeners]
        if len(names) != len(set(names)):
            raise ValueError(f"listener names must be unique: {names}")
        if not self.listeners:
            raise ValueError("at least one listener is required")
        for listener in self.listeners:
            self.params_for(listener)  # overrides must validate
        return self

    def params_for(self, listener: Listener) -> SmtpdParams:
        """The main.cf values with the listener's -o overrides on top."""
        base = {name: getattr(self, name) for name in _PARAM_NAMES}
        return SmtpdParams.model_validate({**base, **listener.overrides})
