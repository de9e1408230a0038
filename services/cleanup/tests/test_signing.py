"""cleanup's DKIM signing and ARC sealing decisions: who is signed, what is
sealed, and what is left alone (the signatures themselves are verified
against DNS in libs/core's and the end-to-end tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from postfleet.cleanup.signing import Signer
from postfleet.core.mailauth import fields, inbound, keys
from postfleet.core.proto.cleanup.v1 import cleanup_pb2
from postfleet.core.routing.snapshot import RoutingSnapshot

SNAPSHOT = RoutingSnapshot.from_config({
    "myhostname": "mx.example.test", "mynetworks": ["192.0.2.0/24"],
    "virtual_alias_domains": ["example.test"],
    "virtual_alias_maps": {"alias@example.test": ["friend@elsewhere.test"]},
})
MESSAGE = (b"From: <alice@example.test>\r\nTo: <bob@elsewhere.test>\r\nSubject: s\r\n\r\n"
           b"hello\r\n")


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    keys.write_key(tmp_path, "s1", "example.test", keys.generate("rsa", 1024))
    return Signer(str(tmp_path), "example.test", "mx.example.test")


def envelope(address: str = "", sasl: str = "", skip_filter: bool = False,
             rcpts: tuple[str, ...] = ("bob@elsewhere.test",)) -> cleanup_pb2.Envelope:
    return cleanup_pb2.Envelope(
        sender="alice@example.test", skip_filter=skip_filter,
        recipients=[cleanup_pb2.Recipient(address=r) for r in rcpts],
        client=cleanup_pb2.ClientInfo(address=address, sasl_username=sasl))


def signed(body: bytes) -> bool:
    return bool(fields.values(body, "dkim-signature"))


@pytest.mark.parametrize(("env", "content_filter", "expected"), [
    (envelope("192.0.2.7"), "", True),  # mynetworks
    (envelope("203.0.113.9", sasl="alice"), "", True),  # authenticated
    (envelope(""), "", True),  # local submission (sendmail)
    (envelope("203.0.113.9"), "", False),  # relayed inbound
    (envelope("192.0.2.7"), "filter:", False),  # signed when it comes back
    (envelope("192.0.2.7", skip_filter=True), "filter:", True),  # back from the filter
])
def test_who_is_signed(signer: Signer, env: cleanup_pb2.Envelope, content_filter: str,
                       expected: bool) -> None:
    body = signer.process(SNAPSHOT, env, "Q1", MESSAGE, [r.address for r in env.recipients],
                          content_filter)
    assert signed(body) is expected
    assert body.endswith(MESSAGE)


def test_a_domain_without_a_key_is_not_signed(signer: Signer) -> None:
    other = MESSAGE.replace(b"alice@example.test", b"alice@other.test")
    assert signer.process(SNAPSHOT, envelope("192.0.2.7"), "Q1", other, [], "") == other


def test_mail_forwarded_outside_by_a_virtual_alias_is_arc_sealed(signer: Signer) -> None:
    stamped = fields.prepend(MESSAGE, inbound.authentication_results(
        "mx.example.test", inbound.Verdicts(arc="none")))
    env = envelope("203.0.113.9", rcpts=("alias@example.test",))
    sealed = signer.process(SNAPSHOT, env, "Q1", stamped, ["friend@elsewhere.test"], "")
    assert [len(fields.values(sealed, n)) for n in (
        "arc-seal", "arc-message-signature", "arc-authentication-results")] == [1, 1, 1]
    assert not signed(sealed)
    # Not rewritten to an outside domain, or no sealing domain: left alone.
    assert signer.process(SNAPSHOT, env, "Q1", stamped, ["alias@example.test"], "") == stamped
    plain = Signer(str(signer.keys.path), "", "mx.example.test")
    assert plain.process(SNAPSHOT, env, "Q1", stamped, ["friend@elsewhere.test"], "") == stamped


@pytest.mark.slow
def test_a_cleanup_without_keys_does_not_load_the_signing_libraries(tmp_path: Path) -> None:
    """dkimpy, cryptography and PyNaCl (about 10 MiB) only where keys are
    configured: issue 13's "roles import only what they use"."""
    probe = (
        "import sys\n"
        "from postfleet.cleanup.settings import CleanupSettings\n"
        "from postfleet.cleanup.queue_writer import QueueWriter\n"
        "from postfleet.cleanup.submit import CleanupService\n"
        "def loaded():\n"
        "    return sorted(m for m in ('dkim', 'cryptography', 'nacl') if m in sys.modules)\n"
        "plain = CleanupService(CleanupSettings(), QueueWriter(None))\n"
        "print(plain.signer is None, loaded())\n"
        f"keyed = CleanupService(CleanupSettings(dkim_key_directory={str(tmp_path)!r}),"
        " QueueWriter(None))\n"
        "print(bool(keyed.signer is not None), loaded())\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFLEET_")}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, env=env).stdout.splitlines()
    assert out == ["True []", "True ['cryptography', 'dkim', 'nacl']"]
