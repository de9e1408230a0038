"""MailDomain.spec.dkim through the real kopf operator (KMock for the API
server, a real NATS): the private key comes from the Secret the MailDomain
names -- or is generated into it when asked --, lands in the cleanup role's
key Secret under its DNS name and never in the snapshot, and the status
shows the TXT record to publish and whether the domain signs."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import operator_fixtures as fixtures
from kmock_support import KopfEmulator
from nats.js import JetStreamContext
from operator_fixtures import StartOperator
from operator_testkit import (
    create,
    current_snapshot,
    eventually,
    get,
    put_secret,
    secret,
    wait_status,
)

from postfleet.core.mailauth import keys

cluster, crds, js, start_operator = (
    fixtures.cluster, fixtures.crds, fixtures.js, fixtures.start_operator)

KEY_SECRET = "postfleet-dkim-keys"  # the operator's, mounted by cleanup


def dkim_status(cluster: KopfEmulator, name: str) -> dict[str, object]:
    return dict(((get(cluster, "maildomains", name) or {}).get("status") or {}).get("dkim")
                or {})


async def test_the_secret_backed_key_is_published_for_cleanup_and_its_record_in_status(
    cluster: KopfEmulator, js: JetStreamContext, start_operator: StartOperator
) -> None:
    private = keys.generate("rsa").decode()
    await put_secret(cluster, "example-org-dkim", {"private.key": private})
    await start_operator()
    await create(cluster, "maildomains", "example-org", {
        "domain": "example.org", "class": "relay",
        "dkim": {"selector": "s1", "secretRef": {"name": "example-org-dkim"}}})
    await wait_status(cluster, "maildomains", "example-org", "True")
    status = await eventually(lambda: dkim_status(cluster, "example-org").get("signing") and
                              dkim_status(cluster, "example-org"), what="status.dkim")
    assert status["dnsRecord"] == keys.dns_record("s1", "example.org", private.encode())
    assert str(status["dnsRecord"]).startswith(
        's1._domainkey.example.org IN TXT "v=DKIM1; k=rsa; p=')
    assert status["algorithm"] == "rsa-sha256"
    assert secret(cluster, KEY_SECRET) == {"s1._domainkey.example.org": private}
    snap = await current_snapshot(js)
    assert snap is not None and "example.org" in snap.relay_domains
    assert "PRIVATE KEY" not in snap.to_json().decode()


async def test_a_key_is_generated_when_asked_and_a_missing_one_stops_only_signing(
    cluster: KopfEmulator, js: JetStreamContext, start_operator: StartOperator
) -> None:
    await start_operator()
    await create(cluster, "maildomains", "made", {
        "domain": "made.example", "class": "relay",
        "dkim": {"selector": "e1", "algorithm": "ed25519-sha256", "generate": True,
                 "secretRef": {"name": "made-dkim", "key": "ed25519"}}})
    await create(cluster, "maildomains", "later", {
        "domain": "later.example", "class": "relay",
        "dkim": {"selector": "s1", "secretRef": {"name": "later-dkim"}}})
    made = await eventually(lambda: dkim_status(cluster, "made").get("signing") and
                            dkim_status(cluster, "made"), what="a generated key signing")
    generated = (secret(cluster, "made-dkim") or {})["ed25519"]
    assert made["dnsRecord"] == keys.dns_record("e1", "made.example", generated.encode())
    assert 'k=ed25519; p=' in str(made["dnsRecord"])

    # No Secret, no generate: routed (Ready), not signing, and why.
    status = await wait_status(cluster, "maildomains", "later", "True")
    assert status["dkim"]["signing"] is False
    assert status["dkim"]["message"] == ("Secret default/later-dkim not found "
                                         "(spec.dkim.generate makes one)")
    assert set(secret(cluster, KEY_SECRET) or {}) == {"e1._domainkey.made.example"}

    # The Secret appears: the status timer picks it up.
    await put_secret(cluster, "later-dkim", {"private.key": keys.generate("rsa").decode()})
    await eventually(lambda: dkim_status(cluster, "later").get("signing"),
                     what="later.example signing")
    await eventually(lambda: set(secret(cluster, KEY_SECRET) or {}) == {
        "e1._domainkey.made.example", "s1._domainkey.later.example"}, what="both keys")
