"""``postfleet user add|del|list``: the built-in SASL user table
(postfleet.core.sasl_users) from the command line, like ``doveadm pw`` plus
an editor for a passwd-file.

Postfix parameters: smtpd_sasl_path (the default table, through
POSTFLEET_SMTPD_SASL_PATH).
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

from postfleet.core.sasl_users import UserTable


def _password(stdin: bool) -> str:
    if stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Retype password: ") != password:
            raise SystemExit("the passwords differ; nothing changed")
    if not password:
        raise SystemExit("empty password; nothing changed")
    return password


def manage_users(action: str, name: str | None, path: Path, password_stdin: bool) -> int:
    table = UserTable(path)
    try:
        if action == "list":
            for user in sorted(table.users()):
                print(user)
            return 0
        if not name:
            raise SystemExit(f"`postfleet user {action}` needs a user name")
        if action == "add":
            new = table.add(name, _password(password_stdin))
            print(f"{'added' if new else 'changed the password of'} {name} in {path}")
            return 0
        if not table.delete(name):
            print(f"postfleet user: no user {name} in {path}", file=sys.stderr)
            return 1
        print(f"deleted {name} from {path}")
        return 0
    except (OSError, ValueError) as exc:
        raise SystemExit(f"postfleet user: {path}: {exc}") from None
