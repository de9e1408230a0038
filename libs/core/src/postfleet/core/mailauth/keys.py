"""DKIM keys: generating them, the TXT record that publishes one, and the key
directory the signer reads.

A key directory holds one file per key, named as the key's DNS record:
``<selector>._domainkey.<domain>`` (``s1._domainkey.example.org``), the way
OpenDKIM's KeyTable names them. That name says which domain and selector the
key signs for; the algorithm comes from the content: a PEM RSA key (PKCS#1
or PKCS#8, as ``opendkim-genkey`` and ``openssl genrsa`` write them) signs
rsa-sha256, a base64 Ed25519 seed (RFC 8463, dkimpy's format) signs
ed25519-sha256. ``postfleet dkim keygen`` writes such a file (and the TXT
record beside it, ``.txt``); in Kubernetes the operator writes the same names
into the Secret the chart mounts as the directory. Files whose names are not
key names (``..data`` and friends of a mounted Secret, ``*.txt``) are
skipped; the directory is read again when it changes (a rotated key).

Postfix parameters: none (postfleet's own: dkim_key_directory).
"""

from __future__ import annotations

import base64
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nacl.encoding
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

log = logging.getLogger(__name__)

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]
KeyType = Literal["rsa", "ed25519"]
KEY_TYPES: dict[KeyType, Algorithm] = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}
RSA_BITS = 2048
DOMAINKEY = "._domainkey."
# A TXT record's character-strings hold 255 octets at most (RFC 1035 3.3).
TXT_STRING_MAX = 255
_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


class BadKey(ValueError):
    """A key that cannot be used (bad format, bad name)."""


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    private: bytes  # the key file's content, as dkimpy takes it

    @property
    def key_type(self) -> KeyType:
        return key_type(self.private)

    @property
    def algorithm(self) -> Algorithm:
        return KEY_TYPES[self.key_type]

    @property
    def record_name(self) -> str:
        return record_name(self.selector, self.domain)


def record_name(selector: str, domain: str) -> str:
    """``<selector>._domainkey.<domain>``: the key's DNS name and file name."""
    return f"{selector}{DOMAINKEY}{domain.lower().rstrip('.')}"


def check_selector(selector: str) -> str:
    if not selector or not all(_LABEL.match(part) for part in selector.split(".")):
        raise BadKey(f"{selector!r} is not a DKIM selector (DNS labels)")
    return selector


def generate(kind: KeyType, bits: int = RSA_BITS) -> bytes:
    """A new private key in the key file format of ``kind``."""
    if kind == "ed25519":
        seed = bytes(nacl.signing.SigningKey.generate())
        return base64.b64encode(seed) + b"\n"
    if bits < 1024:
        raise BadKey("RSA DKIM keys need at least 1024 bits (RFC 8301)")
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return private.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())


def key_type(private: bytes) -> KeyType:
    if b"-----BEGIN" in private:
        return "rsa"
    try:
        seed = base64.b64decode(private.strip(), validate=True)
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise BadKey("neither a PEM RSA key nor a base64 Ed25519 seed (32 bytes)")
    return "ed25519"


def public_key(private: bytes) -> bytes:
    """The ``p=`` value of the key's TXT record (base64)."""
    if key_type(private) == "ed25519":
        signing = nacl.signing.SigningKey(private.strip(), encoder=nacl.encoding.Base64Encoder)
        return base64.b64encode(bytes(signing.verify_key))
    try:
        loaded = serialization.load_pem_private_key(private, password=None)
    except (ValueError, TypeError) as exc:
        raise BadKey(f"unreadable RSA key: {exc}") from None
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise BadKey("a PEM key that is not RSA")
    der = loaded.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der)


def txt_value(private: bytes) -> str:
    """``v=DKIM1; k=rsa; p=...``: the TXT record's text."""
    return f"v=DKIM1; k={key_type(private)}; p={public_key(private).decode()}"


def txt_strings(text: str) -> list[str]:
    """The text cut into character-strings of at most 255 octets."""
    return [text[i:i + TXT_STRING_MAX] for i in range(0, len(text), TXT_STRING_MAX)] or [""]


def dns_record(selector: str, domain: str, private: bytes) -> str:
    """The zone-file line to publish:
    ``s1._domainkey.example.org IN TXT "v=DKIM1; k=rsa; p=..."`` (long
    values as several quoted strings, which resolvers join)."""
    quoted = " ".join(f'"{part}"' for part in txt_strings(txt_value(private)))
    return f"{record_name(selector, domain)} IN TXT {quoted}"


def parse_name(name: str) -> tuple[str, str] | None:
    """``s1._domainkey.example.org`` -> (selector, domain); None for other names."""
    selector, sep, domain = name.partition(DOMAINKEY)
    if not sep or not selector or not domain or name.endswith(".txt"):
        return None
    try:
        check_selector(selector)
    except BadKey:
        return None
    return selector, domain.lower().rstrip(".")


def write_key(directory: Path, selector: str, domain: str, private: bytes) -> Path:
    """Write a key file (mode 0600) and its TXT record beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / record_name(check_selector(selector), domain)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private)
    path.with_name(path.name + ".txt").write_text(dns_record(selector, domain, private) + "\n")
    return path


class KeyDirectory:
    """The keys of a directory, read again when its content changes."""

    def __init__(self, path: str) -> None:
        self.path = Path(path) if path else None
        self._stamp: tuple[tuple[str, int, int], ...] | None = None
        self._keys: dict[str, list[DkimKey]] = {}

    def _scan(self) -> tuple[tuple[str, int, int], ...]:
        assert self.path is not None
        stamp = []
        try:
            # A mounted Secret swaps a symlink (..data): stat follows it.
            for entry in sorted(os.scandir(self.path), key=lambda e: e.name):
                if parse_name(entry.name) is not None:
                    st = entry.stat()
                    stamp.append((entry.name, st.st_mtime_ns, st.st_ino))
        except FileNotFoundError:
            return ()
        return tuple(stamp)

    def keys(self) -> dict[str, list[DkimKey]]:
        """domain -> its keys (the directory as it is now)."""
        if self.path is None:
            return {}
        stamp = self._scan()
        if stamp != self._stamp:
            self._keys = self._load(name for name, _, _ in stamp)
            self._stamp = stamp
        return self._keys

    def _load(self, names: Iterable[str]) -> dict[str, list[DkimKey]]:
        assert self.path is not None
        keys: dict[str, list[DkimKey]] = {}
        for name in names:
            parsed = parse_name(name)
            if parsed is None:
                continue
            selector, domain = parsed
            try:
                private = (self.path / name).read_bytes()
                key_type(private)
            except (OSError, BadKey) as exc:
                log.warning("DKIM key %s/%s not used: %s", self.path, name, exc)
                continue
            keys.setdefault(domain, []).append(DkimKey(domain, selector, private))
        log.info("DKIM keys from %s: %s", self.path,
                 ", ".join(k.record_name for ks in keys.values() for k in ks) or "none")
        return keys

    def for_domain(self, domain: str) -> list[DkimKey]:
        """The keys of ``domain`` or of its closest parent that has keys (a
        signature by the parent aligns in DMARC's relaxed mode)."""
        keys = self.keys()
        labels = domain.lower().rstrip(".").split(".")
        for i in range(len(labels) - 1):
            found = keys.get(".".join(labels[i:]))
            if found:
                return found
        return []
