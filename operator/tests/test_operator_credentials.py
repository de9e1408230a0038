"""Transport.spec.tls and spec.authSecretRef through the real kopf operator
(KMock standing for the API server, a real NATS): the TLS level lands in the
snapshot's smtp_tls_policy_maps, the credentials in the delivery role's
Secret and never in the snapshot, a rotated Secret is followed, and a
Transport whose Secret is missing or whose level is not enforced is not
Ready."""

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
    put_secret,
    secret,
    wait_status,
)

cluster, crds, js, start_operator = (
    fixtures.cluster, fixtures.crds, fixtures.js, fixtures.start_operator)

RELAY = {"host": "smtp.isp.example", "port": 587, "mx": False}
TABLE_SECRET = "postfleet-sasl-passwords"


def password_table(cluster: KopfEmulator) -> str | None:
    return (secret(cluster, TABLE_SECRET) or {}).get("sasl_passwd")


async def test_tls_and_credentials_reach_their_places(
    cluster: KopfEmulator, js: JetStreamContext, start_operator: StartOperator
) -> None:
    await put_secret(cluster, "relay-auth", {"password": "univ-relay:s3cret"})
    await start_operator()
    await create(cluster, "transports", "smarthost", {
        "match": "*", "transport": "smtp", "nexthop": RELAY, "tls": "verify",
        "authSecretRef": {"name": "relay-auth"}})
    status = await wait_status(cluster, "transports", "smarthost", "True")
    assert status["message"] == "in the routing snapshot"
    snap = await current_snapshot(js)
    assert snap is not None
    assert snap.smtp_tls_policy_maps == {"[smtp.isp.example]:587": "verify"}
    assert snap.transport_maps["*"] == "smtp:[smtp.isp.example]:587"
    assert "s3cret" not in snap.to_json().decode()
    # Ready came after the table was written.
    assert password_table(cluster) == "[smtp.isp.example]:587 univ-relay:s3cret\n"

    # A rotated password reaches the table (the Transport's status timer).
    await put_secret(cluster, "relay-auth", {"password": "univ-relay:n3w"})
    await eventually(lambda: password_table(cluster) == "[smtp.isp.example]:587 univ-relay:n3w\n",
                     what="the rotated password in the table")


async def test_not_ready_until_its_secret_exists_or_when_not_enforced(
    cluster: KopfEmulator, js: JetStreamContext, start_operator: StartOperator
) -> None:
    await start_operator()
    await create(cluster, "transports", "later", {
        "match": "later.example", "transport": "smtp", "nexthop": RELAY,
        "authSecretRef": {"name": "later-auth", "key": "creds"}})
    await create(cluster, "transports", "dane", {
        "match": "dane.example", "transport": "smtp", "tls": "dane"})
    status = await wait_status(cluster, "transports", "later", "False")
    assert status["message"] == "Secret default/later-auth (spec.authSecretRef) not found"
    status = await wait_status(cluster, "transports", "dane", "False")
    assert status["message"] == ('spec.tls "dane" is not enforced by the smtp client '
                                 "(it does none, may, encrypt, verify, secure)")
    assert password_table(cluster) == ""  # written, empty: delivery's mount exists

    await put_secret(cluster, "later-auth", {"creds": "someone:pw"})
    await wait_status(cluster, "transports", "later", "True")
    assert password_table(cluster) == "[smtp.isp.example]:587 someone:pw\n"
    snap = await current_snapshot(js)
    assert snap is not None and "later.example" in snap.transport_maps
    assert "dane.example" not in snap.transport_maps
