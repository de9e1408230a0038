"""Typed settings shared by every role (pydantic-settings).

One configuration file (YAML, like Postfix's single main.cf) is read by every
role; each role's settings class takes the parameters it needs and ignores the
rest. Precedence: environment (``POSTFLEET_<NAME>``) > YAML file > Postfix
defaults. The file is named by ``--config`` or ``POSTFLEET_CONFIG``.

Postfix parameters read here: myhostname, mydomain, syslog_name, maillog_file.
"""

from __future__ import annotations

import os
import socket
from typing import Any, ClassVar

from pydantic import AliasChoices, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from postfleet.core.configfile import CONFIG_ENV, load_config_file

__all__ = ["CONFIG_ENV", "CommonSettings", "load_config_file"]


class _YamlSource(PydanticBaseSettingsSource):
    """Settings source: the YAML file, flattened with the role's own section on top."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        data = load_config_file(os.environ.get(CONFIG_ENV))
        section = getattr(settings_cls, "config_section", None)
        merged = {k: v for k, v in data.items() if not isinstance(v, dict) or k in _DICT_KEYS}
        if section and isinstance(data.get(section), dict):
            merged.update(data[section])
        self._data = merged

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        names = parameter_names(self.settings_cls)
        return {k: v for k, v in self._data.items() if k in names}


def parameter_names(settings_cls: type[BaseSettings]) -> set[str]:
    """The names a settings class takes: its fields, and the Postfix names a
    field takes as an alias (2bounce_notice_recipient: Python cannot spell it)."""
    names = set(settings_cls.model_fields)
    for info in settings_cls.model_fields.values():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(a for a in alias.choices if isinstance(a, str))
    return names


# Top-level mapping values that are parameters, not role sections.
_DICT_KEYS = {"routing"}


def _default_hostname() -> str:
    return socket.getfqdn() or "localhost"


class CommonSettings(BaseSettings):
    """Parameters every role reads."""

    model_config = SettingsConfigDict(env_prefix="POSTFLEET_", extra="ignore")
    config_section: ClassVar[str | None] = None

    # Postfix: myhostname (default: the machine's FQDN).
    myhostname: str = Field(default_factory=_default_hostname)
    database_url: str = "sqlite+aiosqlite:///var/postfleet.db"
    nats_url: str = "nats://127.0.0.1:4222"
    # The role's /healthz, /readyz and /metrics listener; port 0 picks a free one.
    http_host: str = "127.0.0.1"
    http_port: int = 0
    log_format: str = "json"  # json | text
    log_level: str = "INFO"
    # Postfix: syslog_name (the mail log's program prefix, postfix/smtpd) and
    # maillog_file (3.4: syslog-format lines to a file; empty: none).
    syslog_name: str = "postfix"
    maillog_file: str = ""
    # Where cleanup's gRPC Submit listens (cleanup binds it; ingress dials it).
    cleanup_address: str = "127.0.0.1:10027"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls), file_secret_settings)
