"""delivery's settings (Postfix parameter names and defaults).

Postfix parameters: myhostname, default_process_limit, smtp_helo_name,
smtp_connect_timeout, smtp_helo_timeout, smtp_mail_timeout,
smtp_rcpt_timeout, smtp_data_init_timeout, smtp_data_done_timeout,
smtp_rset_timeout, smtp_quit_timeout, smtp_connection_cache_time_limit,
smtp_connection_reuse_time_limit, smtp_connection_reuse_count_limit,
smtp_mx_address_limit, smtp_mx_session_limit, smtp_host_lookup,
smtp_dns_support_level, disable_dns_lookups, smtp_randomize_addresses,
smtp_address_preference, inet_protocols, proxy_interfaces,
smtp_send_xforward_command; TLS:
smtp_tls_security_level, smtp_tls_CAfile, smtp_tls_protocols,
smtp_tls_mandatory_protocols, smtp_tls_verify_cert_match,
smtp_tls_secure_cert_match, smtp_tls_loglevel, smtp_starttls_timeout
(smtp_tls_policy_maps is a
table of the routing snapshot); SASL: smtp_sasl_auth_enable,
smtp_sasl_password_maps, smtp_sasl_security_options,
smtp_sasl_tls_security_options, smtp_sasl_mechanism_filter,
smtp_sasl_auth_soft_bounce; lmtp(8):
lmtp_lhlo_name, lmtp_connect_timeout, lmtp_lhlo_timeout, lmtp_mail_timeout,
lmtp_rcpt_timeout, lmtp_data_init_timeout, lmtp_data_done_timeout,
lmtp_quit_timeout, lmtp_tcp_port; local(8) and virtual(8): mailbox_size_limit,
recipient_delimiter, virtual_mailbox_base, virtual_mailbox_limit; pipe(8):
command_time_limit and pipe_transports (master.cf's pipe services by name:
"flags=… user=… argv=…").

postfleet's own (the bus has no Postfix counterpart): delivery_ack_wait,
delivery_fetch_batch, delivery_fetch_timeout, delivery_result_retry_time,
delivery_drain_timeout, delivery_db_pool_size. Also postfleet's own, because
Postfix leaves them to the operating system: dns_nameservers and dns_timeout
(the resolver the smtp client asks; Postfix uses the system's resolv.conf),
smtp_mta_sts_enable, smtp_mta_sts_timeout and smtp_mta_sts_cache_size
(RFC 8461, which Postfix leaves to an external policy server),
local_mail_root, local_user_policy and local_recipients (Postfix's local(8)
finds users and their home directories in the password database; here a user
is a directory under local_mail_root) and virtual_user_policy.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import field_validator, model_validator

from postfleet.core.postfix_list import PostfixList
from postfleet.core.settings import CommonSettings
from postfleet.core.timeparse import Seconds


class DeliverySettings(CommonSettings):
    config_section: ClassVar[str | None] = "delivery"

    # Transports this process serves; each has one durable pull consumer on
    # postfleet.delivery.<transport>, shared by every replica. By default one
    # process serves every transport a routing table can name, like Postfix's
    # stock master.cf ("relay" is the smtp client too).
    transports: PostfixList = ["smtp", "relay", "lmtp", "local", "virtual", "error", "discard"]
    # Postfix: default_process_limit (100) — here, concurrent jobs per process.
    default_process_limit: int = 100

    # pipe(8) services, as master.cf lines' attributes, by transport name:
    # {"filtro": "flags=Rq user=nobody argv=/path/filtro -f ${sender} -- ${recipient}"}.
    # Each is served besides ``transports``.
    pipe_transports: dict[str, str] = {}
    # Postfix: command_time_limit (1000s), how long a pipe command may run.
    command_time_limit: Seconds = 1000.0

    # -- bus -------------------------------------------------------------------
    # How long a fetched job may go without a word before JetStream hands it
    # to another replica. A live replica says "in progress" every half of it
    # however long the delivery takes, so this bounds only how long a dead
    # replica's jobs wait to be redelivered.
    delivery_ack_wait: Seconds = 30.0
    delivery_fetch_batch: int = 64
    # Long-poll of one fetch when the queue is idle; also bounds shutdown.
    delivery_fetch_timeout: Seconds = 2.0
    # How long to keep retrying a result publish (NATS restarting) before
    # giving up on the job unacknowledged, so that it is redelivered.
    delivery_result_retry_time: Seconds = 30.0
    # SIGTERM: finish jobs in hand for at most this long; the rest are redelivered.
    delivery_drain_timeout: Seconds = 30.0
    delivery_db_pool_size: int = 20

    # -- smtp client (Postfix smtp(8)) -------------------------------------------
    smtp_helo_name: str = "$myhostname"
    smtp_connect_timeout: Seconds = 30.0
    smtp_helo_timeout: Seconds = 300.0
    smtp_mail_timeout: Seconds = 300.0
    smtp_rcpt_timeout: Seconds = 300.0
    smtp_data_init_timeout: Seconds = 120.0
    # Covers sending the body too (Postfix's smtp_data_xfer_timeout is not
    # separate: the body is handed to the socket in one write).
    smtp_data_done_timeout: Seconds = 600.0
    smtp_rset_timeout: Seconds = 20.0
    smtp_quit_timeout: Seconds = 300.0
    # MX and host lookups (Postfix smtp(8)). At most smtp_mx_address_limit
    # addresses are tried per delivery (0: no limit), and at most
    # smtp_mx_session_limit sessions that got past EHLO (0: no limit).
    smtp_mx_address_limit: int = 5
    smtp_mx_session_limit: int = 2
    # "dns", "native" or "dns, native" (A/AAAA through DNS, getaddrinfo, or
    # getaddrinfo for hosts DNS does not know). Ignored when DNS is disabled.
    smtp_host_lookup: PostfixList = ["dns"]
    # "" (then disable_dns_lookups decides), "disabled", "enabled", "dnssec"
    # (accepted; no DNSSEC validation or DANE here: treated as "enabled").
    smtp_dns_support_level: Literal["", "disabled", "enabled", "dnssec"] = ""
    disable_dns_lookups: bool = False
    smtp_randomize_addresses: bool = True
    smtp_address_preference: Literal["any", "ipv4", "ipv6"] = "any"
    # Which address families to look up: all, ipv4, ipv6 (Postfix: "all").
    inet_protocols: PostfixList = ["all"]
    # Addresses this MTA is reached at besides its own name (Postfix: the
    # network addresses forwarded to it by a NAT or proxy). An MX host named
    # myhostname, or with one of these addresses, is this host: mail for a
    # domain whose best MX is this host "loops back to myself" (5.4.6).
    proxy_interfaces: PostfixList = []
    # postfleet's: the DNS servers to ask, "ip" or "ip:port" ("[ip6]:port");
    # empty: the system resolver (/etc/resolv.conf), like Postfix.
    dns_nameservers: PostfixList = []
    # postfleet's: how long one DNS lookup may take in all (retries included).
    dns_timeout: Seconds = 10.0

    # -- outbound TLS (Postfix TLS_README, smtp(8) side) ------------------------
    # The default level for destinations without an smtp_tls_policy_maps
    # entry (or an MTA-STS policy): none, may, encrypt, verify, secure. Empty
    # (Postfix's default) is "none".
    smtp_tls_security_level: Literal["", "none", "may", "encrypt", "verify", "secure"] = ""
    # Trust anchors for verify/secure and for MTA-STS's HTTPS: this PEM file
    # only; empty: the system's CA store.
    smtp_tls_CAfile: str = ""
    # Protocols at "may" (smtp_tls_protocols) and at encrypt and above
    # (smtp_tls_mandatory_protocols): ">=TLSv1.2", "<=TLSv1.3" or
    # "!SSLv3, !TLSv1, !TLSv1.1". Never below TLSv1.2, Python's own floor.
    smtp_tls_protocols: str = ">=TLSv1"
    smtp_tls_mandatory_protocols: str = ">=TLSv1"
    # Which certificate names satisfy verify and secure: hostname (the
    # server's name as found, MX or [host]), nexthop, dot-nexthop, a name, or
    # .domain for its subdomains.
    smtp_tls_verify_cert_match: PostfixList = ["hostname"]
    smtp_tls_secure_cert_match: PostfixList = ["nexthop", "dot-nexthop"]
    # 1: log "Verified TLS connection established to host[addr]:port: ...".
    # Postfix's default is 0 (nothing); postfleet logs the TLS facts by default.
    smtp_tls_loglevel: int = 1
    smtp_starttls_timeout: Seconds = 300.0
    # postfleet's: MTA-STS (RFC 8461) for destinations found by MX lookup,
    # below smtp_tls_policy_maps. An "enforce" policy verifies the server's
    # certificate for its MX name and skips MX hosts the policy does not list.
    smtp_mta_sts_enable: bool = False
    # How long fetching one policy may take (TXT lookup aside).
    smtp_mta_sts_timeout: Seconds = 10.0
    # Policies cached (each for its max_age), most recently used kept.
    smtp_mta_sts_cache_size: int = 10000

    # -- client SASL (Postfix SASL_README, smtp(8) side) -------------------------
    smtp_sasl_auth_enable: bool = False
    # A table of "username:password" by server host name, then by next hop as
    # written in transport_maps or relayhost ("[smtp.isp.example]:587"):
    # texthash:/path (or hash:/path, its postmap source) or inline:{k=v}.
    # Read at each new session, so a changed file (a Secret Kubernetes
    # updates) applies without a restart.
    smtp_sasl_password_maps: str = ""
    # Mechanism properties refused in clear text, and under TLS. Postfix's
    # smtp_sasl_tls_security_options defaults to $smtp_sasl_security_options,
    # which with noplaintext refuses PLAIN and LOGIN even under TLS; postfleet
    # defaults it to SASL_README's advice, noanonymous: credentials go out
    # in PLAIN/LOGIN only over TLS unless smtp_sasl_security_options allows.
    smtp_sasl_security_options: PostfixList = ["noplaintext", "noanonymous"]
    smtp_sasl_tls_security_options: PostfixList = ["noanonymous"]
    # Only these mechanisms (case-insensitive); empty: any the client knows
    # (CRAM-MD5, PLAIN, LOGIN).
    smtp_sasl_mechanism_filter: PostfixList = []
    # A 535 defers (4.7.x) instead of bouncing.
    smtp_sasl_auth_soft_bounce: bool = True

    # Send XFORWARD (the original client's name, address, HELO, protocol and
    # queue id) when the server announces it: a content filter such as
    # amavisd-new then sees who really sent the mail (Postfix: no).
    smtp_send_xforward_command: bool = False

    # -- lmtp client (Postfix lmtp(8)); never an MX lookup ---------------------
    lmtp_lhlo_name: str = "$myhostname"
    lmtp_tcp_port: int = 24
    lmtp_connect_timeout: Seconds = 0.0  # 0: the operating system's limit
    lmtp_lhlo_timeout: Seconds = 300.0
    lmtp_mail_timeout: Seconds = 300.0
    lmtp_rcpt_timeout: Seconds = 300.0
    lmtp_data_init_timeout: Seconds = 120.0
    lmtp_data_done_timeout: Seconds = 600.0
    lmtp_quit_timeout: Seconds = 300.0

    # -- local (Postfix local(8), Maildir only) ----------------------------------
    # <local_mail_root>/<user>/Maildir/{tmp,new,cur}; <user> is the
    # recipient's local part, lowercased, without its recipient_delimiter
    # extension (the home directory and home_mailbox = Maildir/ of Postfix).
    local_mail_root: str = "var/mail"
    # Who is a local user (Postfix asks the password database):
    #   existing  a user whose directory <local_mail_root>/<user> exists
    #   create    any user; the directory is made on first delivery
    # Anyone else is bounced 5.1.1 'unknown user: "x"'.
    local_user_policy: Literal["existing", "create"] = "existing"
    # When set, exactly these users exist (directories made on demand),
    # whatever local_user_policy says.
    local_recipients: PostfixList = []
    # Largest maildir file local(8) or virtual(8) writes (0: no limit) -> 5.2.2.
    mailbox_size_limit: int = 51200000
    # Characters that start an address extension (user+ext); empty: none.
    recipient_delimiter: str = ""

    # -- virtual (Postfix virtual(8), Maildir only) ------------------------------
    # <virtual_mailbox_base>/<domain>/<user>/{tmp,new,cur}. Postfix looks the
    # path up in virtual_mailbox_maps; recipients reach delivery only once
    # routing has found them there, so by default the maildir is made on
    # demand ("create"); "existing" bounces users without a directory.
    virtual_mailbox_base: str = "var/vmail"
    virtual_user_policy: Literal["existing", "create"] = "create"
    virtual_mailbox_limit: int = 51200000
    # Connection cache: an idle session is closed after the cache time limit;
    # a session is not reused once older than the reuse time limit or after
    # the reuse count limit (0: no limit).
    smtp_connection_cache_time_limit: Seconds = 2.0
    smtp_connection_reuse_time_limit: Seconds = 300.0
    smtp_connection_reuse_count_limit: int = 0

    @field_validator("smtp_host_lookup")
    @classmethod
    def _host_lookup(cls, value: list[str]) -> list[str]:
        methods = [v.lower() for v in value]
        if not methods or any(m not in ("dns", "native") for m in methods):
            raise ValueError('smtp_host_lookup: "dns", "native" or "dns, native"')
        return methods

    @field_validator("smtp_sasl_security_options", "smtp_sasl_tls_security_options")
    @classmethod
    def _sasl_options(cls, value: list[str]) -> list[str]:
        known = {"noplaintext", "noactive", "nodictionary", "noanonymous", "mutual_auth"}
        options = [v.lower() for v in value]
        unknown = [o for o in options if o not in known]
        if unknown:
            raise ValueError(f"unknown SASL security options: {', '.join(unknown)}")
        return options

    @field_validator("inet_protocols")
    @classmethod
    def _protocols(cls, value: list[str]) -> list[str]:
        names = [v.lower() for v in value]
        if not names or any(n not in ("all", "ipv4", "ipv6") for n in names):
            raise ValueError('inet_protocols: "all", "ipv4", "ipv6" or "ipv4, ipv6"')
        return names

    def served_transports(self) -> list[str]:
        """``transports`` and every pipe service."""
        return [*self.transports, *(n for n in self.pipe_transports if n not in self.transports)]

    @field_validator("pipe_transports")
    @classmethod
    def _pipes(cls, value: dict[str, str]) -> dict[str, str]:
        from postfleet.delivery.pipe import parse_pipe_service

        for name, text in value.items():
            try:
                parse_pipe_service(text)
            except ValueError as exc:
                raise ValueError(f"pipe_transports {name}: {exc}") from None
        return value

    @property
    def dns_enabled(self) -> bool:
        """Postfix: smtp_dns_support_level, or when empty, not disable_dns_lookups."""
        if self.smtp_dns_support_level:
            return self.smtp_dns_support_level != "disabled"
        return not self.disable_dns_lookups

    @model_validator(mode="after")
    def _expand(self) -> DeliverySettings:
        for name in ("smtp_helo_name", "lmtp_lhlo_name"):
            value = getattr(self, name)
            value = value.replace("${myhostname}", self.myhostname)
            setattr(self, name, value.replace("$myhostname", self.myhostname))
        if self.default_process_limit < 1:
            raise ValueError("default_process_limit must be at least 1")
        if self.delivery_fetch_batch < 1:
            raise ValueError("delivery_fetch_batch must be at least 1")
        return self
