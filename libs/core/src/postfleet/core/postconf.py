"""A role's parameters as postconf(1) shows them: ``python -m
postfleet.<role> --postconf`` prints, as one JSON document, every parameter
of the role's settings class with its effective value (environment > the
config file's role section > its top level > default), its default, and
whether it is set (postconf -n) — without connecting to anything.

Why a process and not an import: the CLI never imports a role (the
import-linter contract), and the role itself is the only place that knows
its parameters and defaults — a registry kept apart would drift from it.
``postfleet postconf`` runs each role this way and prints what they say.

Values are rendered as main.cf writes them (yes/no, lists joined with ", ");
a password in a URL is masked.

Postfix parameters: all of a role's (this is postconf).
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import TypeAdapter
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from postfleet.core.timeparse import format_time, is_time

POSTCONF_FLAG = "--postconf"
_URL_PASSWORD = re.compile(r"(://[^/:@]*:)[^/@]*@")


def render(value: Any) -> str:
    """A value as main.cf would hold it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1***@", value)
    if isinstance(value, int | float):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, Mapping):
        return json.dumps(value, default=str, sort_keys=True)
    if isinstance(value, Sequence):
        return ", ".join(render(v) for v in value)
    if hasattr(value, "model_dump"):
        return json.dumps(value.model_dump(mode="json"), sort_keys=True)
    return str(value)


def report(settings: BaseSettings) -> dict[str, dict[str, Any]]:
    """name -> {"value", "default", "set"} for every parameter, by name."""
    out: dict[str, dict[str, Any]] = {}
    for name, field in sorted(type(settings).model_fields.items()):
        show = _time if is_time(field.metadata) else render
        out[name] = {"value": show(getattr(settings, name)),
                     "default": show(_default(field)),
                     "set": name in settings.model_fields_set}
    return out


def _default(field: FieldInfo) -> Any:
    """The default as the role takes it: validated as the field is (a bare
    "5" of a queue lifetime is 5 days)."""
    value = field.get_default(call_default_factory=True)
    try:
        kind: Any = Annotated[field.annotation, *field.metadata]
        return TypeAdapter(kind).validate_python(value)
    except Exception:
        return value


def _time(value: Any) -> str:
    return format_time(value) if isinstance(value, int | float) else render(value)


def wants_postconf(argv: Sequence[str] | None = None) -> bool:
    return POSTCONF_FLAG in (sys.argv[1:] if argv is None else argv)


def print_postconf(settings_cls: type[BaseSettings]) -> None:
    print(json.dumps(report(settings_cls())))


# Optional imports of the roles' libraries that no role uses: nats-py
# imports aiohttp (about 8 MiB per process) for WebSocket URLs, which the
# bus never uses (nats:// and tls:// only). Marked absent, such an import
# fails as if the package were not installed, which the library allows for.
UNUSED_OPTIONAL_IMPORTS = ("aiohttp",)


def skip_unused_imports(names: tuple[str, ...] = UNUSED_OPTIONAL_IMPORTS) -> None:
    for name in names:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def role_entry(settings: str, main: str, *,
               unused_imports: tuple[str, ...] = UNUSED_OPTIONAL_IMPORTS) -> None:
    """A role's ``python -m`` entry point. ``settings`` and ``main`` name
    ``module:attribute``; with --postconf only the settings module is
    imported and its parameters printed (so `postfleet postconf` does not pay
    for the role's start-up imports), otherwise ``main()`` runs the role.
    ``unused_imports`` are marked absent first (the operator, whose kopf
    runs on aiohttp, passes none)."""
    skip_unused_imports(unused_imports)
    module, _, name = (settings if wants_postconf() else main).partition(":")
    target = getattr(importlib.import_module(module), name)
    if wants_postconf():
        print_postconf(target)
    else:
        target()
