"""Postfix list values: the one parser for every list parameter.

main.cf writes lists as "a, b c" (commas and/or white space); postfleet's
YAML and JSON environment values may also be real lists ("[...]" in an
environment variable is JSON). ``PostfixList`` is the pydantic type every
settings class and the routing snapshot use for them.

Postfix parameters: every list-valued one (mynetworks, relay_domains,
smtpd_recipient_restrictions, transports, ...).
"""

from __future__ import annotations

import json
import re
from typing import Annotated

from pydantic import BeforeValidator
from pydantic_settings import NoDecode

# A word, where "{...}" (braces may nest) stays one piece with its spaces, as
# Postfix's mystrtokq: "check_client_access inline:{ a=OK, b=REJECT }".
_WORD = re.compile(r"(?:[^,\s{]|\{(?:[^{}]|\{[^{}]*\})*\})+")


def split_list(text: str) -> list[str]:
    """ "a, b c" -> ["a", "b", "c"]; "x:{ a=1, b=2 }" stays one value."""
    return _WORD.findall(text)


def postfix_list(value: object) -> object:
    """A list value from main.cf-style text, JSON text, or a list as it is."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            # JSON, unless it is main.cf text that starts with an IPv6
            # network ("[::1]/128 ...") or a bracketed host ("[::1]").
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            if isinstance(parsed, list):
                return parsed
        return split_list(text)
    return value


# NoDecode: pydantic-settings must hand the raw environment string to the
# validator rather than try JSON itself (a bare "a, b" is not JSON).
PostfixList = Annotated[list[str], NoDecode, BeforeValidator(postfix_list)]
OptionalPostfixList = Annotated[list[str] | None, NoDecode, BeforeValidator(postfix_list)]
