"""The built-in SASL user table: smtpd's user database for clusters without
Dovecot, kept by ``postfleet user add|del|list`` and read by ingress-smtp
(``smtpd_sasl_type = builtin``, the file named by ``smtpd_sasl_path``).

The file is a Dovecot passwd-file, one user a line::

    alice@example.org:{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=4$salt$hash

so the same file also serves a Dovecot ``passdb { driver = passwd-file }``
unchanged. Passwords are hashed with Argon2id (argon2-cffi, RFC 9106
parameters: its ``PasswordHasher`` defaults); a line with any other scheme
-- above all ``{PLAIN}`` -- is refused when the file is read, so no clear
text password is ever accepted. Lines starting with ``#`` and blank lines
are ignored; fields after the hash (Dovecot's uid, gid, home, ...) are kept
but not used. User names are compared exactly, as Dovecot does by default.

In Kubernetes the file is a key of a Secret the chart mounts; the server
re-reads it when the kubelet swaps the mounted file.

Postfix parameters: none (smtpd_sasl_path names the file, see ingress-smtp).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

SCHEME = "{ARGON2ID}"
_HASHER = PasswordHasher()


def hash_password(password: str) -> str:
    """The stored form of ``password``: ``{ARGON2ID}$argon2id$...``."""
    if not password:
        raise ValueError("the password is empty")
    return SCHEME + _HASHER.hash(password)


def verify_password(stored: str, password: str) -> bool:
    """Does ``password`` match the stored hash? (CPU-bound: call it off the loop.)"""
    if not stored.startswith(SCHEME):
        return False
    try:
        return _HASHER.verify(stored[len(SCHEME):], password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def check_user_name(name: str) -> str:
    if not name or any(ch in name for ch in ":\r\n\t ") or not name.isprintable():
        raise ValueError(f"bad user name {name!r}: no colon, white space or control characters")
    return name


@dataclass(frozen=True)
class UserLine:
    name: str
    hash: str
    rest: str = ""  # Dovecot's further fields, kept as they are

    def render(self) -> str:
        return f"{self.name}:{self.hash}{':' + self.rest if self.rest else ''}"


def parse_users(text: str, source: str = "user table") -> dict[str, UserLine]:
    users: dict[str, UserLine] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, rest = line.partition(":")
        stored, _, more = rest.partition(":")
        if not colon or not name:
            raise ValueError(f"{source}, line {number}: expected user:{SCHEME}hash")
        if not stored.startswith(SCHEME):
            scheme = stored[:stored.index("}") + 1] if stored.startswith("{") else "no scheme"
            raise ValueError(f"{source}, line {number}: user {name!r} has {scheme}; only "
                             f"{SCHEME} hashes are accepted (postfleet user add)")
        users.setdefault(name, UserLine(name, stored, more))
    return users


class UserTable:
    """The table as a file: read (re-read when it changed), and rewritten whole."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[str, UserLine] = {}

    def users(self) -> dict[str, UserLine]:
        """The users now in the file (a missing file is an empty table)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._users = None, {}
            return self._users
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            self._users = parse_users(self.path.read_text(encoding="utf-8"), str(self.path))
            self._stamp = stamp
        return self._users

    def stored_hash(self, name: str) -> str | None:
        user = self.users().get(name)
        return None if user is None else user.hash

    def add(self, name: str, password: str) -> bool:
        """Add ``name`` or replace its password; True when the user is new."""
        users = dict(self.users())
        new = check_user_name(name) not in users
        rest = "" if new else users[name].rest
        users[name] = UserLine(name, hash_password(password), rest)
        self._write(users)
        return new

    def delete(self, name: str) -> bool:
        users = dict(self.users())
        if users.pop(name, None) is None:
            return False
        self._write(users)
        return True

    def _write(self, users: dict[str, UserLine]) -> None:
        """Replace the file atomically (a reader sees the old or the new table)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(user.render() + "\n" for user in users.values())
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            os.chmod(tmp, 0o640)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._stamp = None
