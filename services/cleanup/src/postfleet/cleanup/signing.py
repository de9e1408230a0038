"""cleanup: DKIM signing and ARC sealing, the last change to a message
before it is queued.

Why here and not at the outbound edge: the signature must cover the message
as it leaves, and cleanup is where the message takes its final form
(Received, Message-ID and Date added, header/body checks and milters done);
nothing after it changes a signed header field or the body, so one
signature made at queue time serves every recipient and every retry
(delivery would sign again for each attempt). Whether mail may be signed
depends on who submitted it -- authenticated (sasl_username), a client in
mynetworks, or a local submission (sendmail, as Postfix's
non_smtpd_milters sign it) -- which cleanup is told with the message and
delivery is not. And only cleanup holds private keys: the delivery pods,
the ones open to the Internet, never do. Relayed inbound mail is not signed.
A message on its way to a content filter is signed when it comes back
(the filter may change it), as Postfix sites sign after the filter.

The key is the From: domain's (or its closest parent's) in
dkim_key_directory (postfleet.core.mailauth.keys); a domain with two keys
(RSA and Ed25519) gets two signatures.

ARC (arc_seal_domain): mail that is relayed in and forwarded by a virtual
alias to a domain that is not ours gets an ARC set over the message as it
leaves, sealed with arc_seal_domain's RSA key from the same directory; it
carries the Authentication-Results ingress-smtp stamped (authserv-id
myhostname), so it needs smtpd_authentication_checks on the listener.

Postfix parameters: myhostname, mynetworks (through the snapshot);
postfleet's own: dkim_key_directory, arc_seal_domain.
"""

from __future__ import annotations

import ipaddress
import logging

from postfleet.core.mailauth import fields, signing
from postfleet.core.mailauth.keys import KeyDirectory
from postfleet.core.maillog import maillog
from postfleet.core.proto.cleanup.v1 import cleanup_pb2
from postfleet.core.routing.resolver import AddressClass, address_class
from postfleet.core.routing.snapshot import RoutingSnapshot

log = logging.getLogger(__name__)


class Signer:
    def __init__(self, key_directory: str, arc_seal_domain: str, myhostname: str) -> None:
        self.keys = KeyDirectory(key_directory)
        self.arc_seal_domain = arc_seal_domain.lower().strip()
        self.myhostname = myhostname

    def __bool__(self) -> bool:
        return self.keys.path is not None

    def process(self, snapshot: RoutingSnapshot, env: cleanup_pb2.Envelope, queue_id: str,
                body: bytes, recipients: list[str], content_filter: str) -> bytes:
        """The message signed, sealed, or as it was."""
        if not self or (content_filter and not env.skip_filter):
            return body
        if may_sign(snapshot, env.client):
            return self._sign(queue_id, body)
        if self.arc_seal_domain and forwarded_outside(snapshot, env, recipients):
            return self._seal(queue_id, body)
        return body

    def _sign(self, queue_id: str, body: bytes) -> bytes:
        domain = fields.from_domain(body)
        keys = self.keys.for_domain(domain) if domain else []
        if not keys:
            return body
        try:
            signed = signing.sign(body, keys)
        except Exception as exc:  # a bad key must not lose the message
            log.warning("%s: DKIM signing for %s failed: %s", queue_id, domain, exc)
            return body
        for key in keys:
            maillog("cleanup", queue_id, f"DKIM-Signature field added (s={key.selector}, "
                    f"d={key.domain}, a={key.algorithm})")
        return signed

    def _seal(self, queue_id: str, body: bytes) -> bytes:
        keys = [k for k in self.keys.keys().get(self.arc_seal_domain, [])
                if k.key_type == "rsa"]
        if not keys:
            log.warning("arc_seal_domain %s has no RSA key in %s", self.arc_seal_domain,
                        self.keys.path)
            return body
        try:
            sealed = signing.arc_seal(body, keys[0], self.myhostname)
        except Exception as exc:
            log.warning("%s: ARC sealing failed: %s", queue_id, exc)
            return body
        if sealed is None:
            return body
        maillog("cleanup", queue_id, f"ARC-Seal field added (s={keys[0].selector}, "
                f"d={keys[0].domain})")
        return sealed


def may_sign(snapshot: RoutingSnapshot, client: cleanup_pb2.ClientInfo) -> bool:
    """Authenticated, in mynetworks, or submitted locally (no client address)."""
    if client.sasl_username or not client.address:
        return True
    try:
        address = ipaddress.ip_address(client.address)
    except ValueError:
        return False
    return any(address in network for network in snapshot.networks)


def forwarded_outside(snapshot: RoutingSnapshot, env: cleanup_pb2.Envelope,
                      recipients: list[str]) -> bool:
    """A recipient was rewritten (virtual alias) to a domain that is not ours."""
    received = {r.address.lower() for r in env.recipients}
    return any(
        r.lower() not in received
        and address_class(snapshot, r.rpartition("@")[2]) is AddressClass.DEFAULT
        for r in recipients)
