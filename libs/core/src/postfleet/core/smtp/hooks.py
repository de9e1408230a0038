"""Cheap attribute listings for aiosmtpd's per-session set-up.

aiosmtpd's SMTP.__init__ finds its command methods and the handler's hooks
with ``inspect.getmembers(self)``, ``dir(self)`` and ``dir(handler)`` -- for
every connection. Walking every attribute of a session (properties
included) is a fifth of smtpd's CPU under a one-message-per-connection
load (bench/profile.py). aiosmtpd only looks for ``smtp_*``, ``auth_*`` and
``handle_*`` names, so a class that mixes this in answers ``dir()`` with
just those names, listed once per class.

Postfix parameters: none.
"""

from __future__ import annotations

from typing import Any

_PREFIXES = ("smtp_", "auth_", "handle_")


_NAMES: dict[type, list[str]] = {}


def _hook_names(cls: type) -> list[str]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = sorted(
            {n for base in cls.__mro__ for n in vars(base) if n.startswith(_PREFIXES)})
    return names


class HookNames:
    """Mixin: ``dir(instance)`` lists only the aiosmtpd hook names."""

    def __dir__(self) -> Any:
        return list(_hook_names(type(self)))
