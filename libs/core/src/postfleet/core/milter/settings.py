"""Milter settings: Postfix's parameters and defaults (milter_readme).

A milter is named as in main.cf: ``inet:host:port`` or ``unix:/path``, or
Postfix 3's braced form with its own settings: ``{ inet:127.0.0.1:8891,
default_action=accept, command_timeout=10s, connect_timeout=5s,
content_timeout=60s, protocol=6 }``.

Postfix parameters: smtpd_milters, non_smtpd_milters, milter_protocol,
milter_default_action, milter_connect_timeout, milter_command_timeout,
milter_content_timeout, milter_connect_macros, milter_helo_macros,
milter_mail_macros, milter_rcpt_macros, milter_data_macros,
milter_end_of_header_macros, milter_end_of_data_macros,
milter_macro_daemon_name, milter_macro_v.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, field_validator

from postfleet.core.milter import wire
from postfleet.core.postfix_list import PostfixList
from postfleet.core.timeparse import Seconds, parse_time

DefaultAction = Literal["accept", "reject", "tempfail", "quarantine"]
ACTIONS = ("accept", "reject", "tempfail", "quarantine")


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


@dataclass(frozen=True)
class MilterSpec:
    """One milter and the settings it runs with."""

    name: str  # as configured: inet:host:port or unix:/path
    default_action: DefaultAction
    connect_timeout: float
    command_timeout: float
    content_timeout: float
    protocol: int

    @property
    def endpoint(self) -> tuple[str, str, int]:
        """("inet", host, port) or ("unix", path, 0)."""
        kind, _, rest = self.name.partition(":")
        if kind == "unix":
            return "unix", rest, 0
        if kind in ("inet", "inet4", "inet6"):
            host, _, port = rest.rpartition(":")
            return "inet", host.strip("[]") or "127.0.0.1", int(port)
        raise ValueError(f"milter {self.name!r}: use inet:host:port or unix:/path")


class MilterParams(BaseModel):
    """The milter parameters; a listener may override them (-o)."""

    smtpd_milters: PostfixList = []
    non_smtpd_milters: PostfixList = []
    milter_protocol: int = 6
    milter_default_action: Annotated[DefaultAction, BeforeValidator(_lower)] = "tempfail"
    milter_connect_timeout: Seconds = 30.0
    milter_command_timeout: Seconds = 30.0
    milter_content_timeout: Seconds = 300.0
    milter_connect_macros: str = "j {daemon_name} {daemon_addr} v _"
    milter_helo_macros: str = "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}"
    milter_mail_macros: str = ("i {auth_type} {auth_authen} {auth_author} {mail_addr} "
                               "{mail_host} {mail_mailer}")
    milter_rcpt_macros: str = "i {rcpt_addr} {rcpt_host} {rcpt_mailer}"
    milter_data_macros: str = "i"
    milter_end_of_header_macros: str = "i"
    milter_end_of_data_macros: str = "i"
    milter_macro_daemon_name: str = "$myhostname"
    milter_macro_v: str = "$mail_name $mail_version"

    @field_validator("milter_protocol")
    @classmethod
    def _protocol(cls, value: int) -> int:
        if not 2 <= value <= 6:
            raise ValueError("milter_protocol must be 2 to 6")
        return value

    @field_validator("smtpd_milters", "non_smtpd_milters")
    @classmethod
    def _milters(cls, value: list[str]) -> list[str]:
        for entry in value:
            parse_milter(entry, MilterParams.model_construct())
        return value

    def milters(self, names: list[str]) -> list[MilterSpec]:
        return [parse_milter(entry, self) for entry in names]

    def stage_macros(self) -> dict[bytes, str]:
        """The milter_*_macros lists by the event they go with."""
        return {
            wire.SMFIC_CONNECT: self.milter_connect_macros,
            wire.SMFIC_HELO: self.milter_helo_macros,
            wire.SMFIC_MAIL: self.milter_mail_macros,
            wire.SMFIC_RCPT: self.milter_rcpt_macros,
            wire.SMFIC_DATA: self.milter_data_macros,
            wire.SMFIC_EOH: self.milter_end_of_header_macros,
            wire.SMFIC_BODYEOB: self.milter_end_of_data_macros,
        }


_SETTING = re.compile(r"^\s*([a-z_]+)\s*=\s*(.*?)\s*$")


def parse_milter(entry: str, params: MilterParams) -> MilterSpec:
    """One smtpd_milters entry, with the main.cf settings as its defaults."""
    spec = MilterSpec(
        name=entry.strip(), default_action=params.milter_default_action,
        connect_timeout=params.milter_connect_timeout,
        command_timeout=params.milter_command_timeout,
        content_timeout=params.milter_content_timeout, protocol=params.milter_protocol)
    text = entry.strip()
    if text.startswith("{") and text.endswith("}"):
        name, *settings = [part for part in text[1:-1].split(",") if part.strip()]
        spec = replace(spec, name=name.strip())
        for setting in settings:
            match = _SETTING.match(setting)
            if match is None:
                raise ValueError(f"milter {entry!r}: bad setting {setting.strip()!r}")
            key, value = match.groups()
            if key == "default_action":
                if value.lower() not in ACTIONS:
                    raise ValueError(f"milter {entry!r}: default_action must be one of "
                                     f"{', '.join(ACTIONS)}")
                spec = replace(spec, default_action=value.lower())  # type: ignore[arg-type]
            elif key == "connect_timeout":
                spec = replace(spec, connect_timeout=parse_time(value))
            elif key == "command_timeout":
                spec = replace(spec, command_timeout=parse_time(value))
            elif key == "content_timeout":
                spec = replace(spec, content_timeout=parse_time(value))
            elif key == "protocol":
                spec = replace(spec, protocol=int(value))
            else:
                raise ValueError(f"milter {entry!r}: unknown setting {key}")
    spec.endpoint  # noqa: B018 -- validates the address
    return spec


def macro_names(text: str) -> list[str]:
    """``"j {daemon_name} v"`` -> ["j", "{daemon_name}", "v"]."""
    return text.replace(",", " ").split()
