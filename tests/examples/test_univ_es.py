"""The tutorial's univ.es mail tier (examples/univ.es): per host and stage, a
table of addresses with the address class, final addresses, transport, next
hop and RCPT-time verdict Postfix gives them -- checked through
``postfleet route --json``, through the library, through ``postfleet
import-postfix`` of the Postfix files, and through the operator's resources."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from postfleet.cli.main import main
from postfleet.cli.postfix_import import import_postfix
from postfleet.cli.routes import describe, route_context, snapshot_from_config
from postfleet.core.routing.rcpt_checks import check_recipient, outside_client
from postfleet.core.routing.resolver import resolve
from postfleet.core.routing.rewrite import final_recipients
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.settings import load_config_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "univ.es"
CRDS = Path(__file__).resolve().parents[2] / "charts" / "postfleet" / "crds"

RELAY_DENIED = "554 5.7.1 <{}>: Relay access denied"
LOCAL_UNKNOWN = ("550 5.1.1 <{}>: Recipient address rejected: "
                 "User unknown in local recipient table")
ALIAS_UNKNOWN = ("550 5.1.1 <{}>: Recipient address rejected: "
                 "User unknown in virtual alias table")
MOVED = "550 5.1.6 <{}>: Recipient address rejected: User has moved to {}"


def row(address: str, cls: str, transport: str, nexthop: str, *, mx: bool = False,
        rewritten: list[str] | None = None, reject: str | None = None,
        port: int | None = None) -> dict[str, Any]:
    return {"address": address, "class": cls, "rewritten": rewritten or [address],
            "transport": transport, "nexthop": nexthop, "port": port, "mx": mx,
            "reject": reject.format(address) if reject else None}


# relay.univ.es (2.1): static routes to the second level, MX lookups outside.
RELAY = [
    row("someone@univ.es", "relay", "smtp", "smtp.univ.es"),
    row("someone@depart1.univ.es", "relay", "smtp", "smtp.depart1.univ.es"),
    row("someone@lab.depart1.univ.es", "relay", "smtp", "smtp.depart1.univ.es"),
    row("someone@depart2.univ.es", "relay", "smtp", "smtp.depart2.univ.es"),
    # A subdomain with no transport entry: a relay domain all the same
    # (relay_domains matches subdomains), relay_transport, MX lookup.
    row("someone@depart3.univ.es", "relay", "relay", "depart3.univ.es", mx=True),
    row("root@relay.univ.es", "local", "local", "relay.univ.es"),
    row("postmaster@relay.univ.es", "local", "local", "relay.univ.es",
        rewritten=["root@relay.univ.es"]),
    row("abuse@localhost.univ.es", "local", "local", "relay.univ.es",
        rewritten=["root@relay.univ.es"]),
    row("postmaster", "local", "local", "relay.univ.es", rewritten=["root@relay.univ.es"]),
    row("nobody@relay.univ.es", "local", "local", "relay.univ.es", reject=LOCAL_UNKNOWN),
    row("someone@fund-univ.es", "default", "smtp", "fund-univ.es", mx=True,
        reject=RELAY_DENIED),
    row("jheras@pastorro.com", "default", "smtp", "pastorro.com", mx=True, reject=RELAY_DENIED),
]


def _relay_fund(hop: str) -> list[dict[str, Any]]:
    rows = [r for r in RELAY if r["address"] != "someone@fund-univ.es"]
    return [*rows, row("someone@fund-univ.es", "relay", "smtp", hop),
            row("gerente@fund-univ.es", "relay", "smtp", hop)]


# smtp.univ.es (2.2): univ.es is local, the departments are reached directly
# (".univ.es smtp:", their own domain, no DNS lookups), the rest via [relay].
SMTP = [
    row("rgarcia@univ.es", "local", "local", "univ.es"),
    row("RGarcia@Univ.es", "local", "local", "univ.es"),
    row("root@smtp.univ.es", "local", "local", "smtp.univ.es"),
    row("postmaster@univ.es", "local", "local", "univ.es", rewritten=["root@univ.es"]),
    row("postmaster", "local", "local", "univ.es", rewritten=["root@univ.es"]),
    row("nobody@univ.es", "local", "local", "univ.es", reject=LOCAL_UNKNOWN),
    # relay_domains is empty at compatibility_level 3.6 (it was $mydestination
    # in 2.0): an outside client cannot relay to the departments through here.
    row("someone@depart1.univ.es", "default", "smtp", "depart1.univ.es", reject=RELAY_DENIED),
    row("someone@lab.depart2.univ.es", "default", "smtp", "lab.depart2.univ.es",
        reject=RELAY_DENIED),
    row("jheras@pastorro.com", "default", "smtp", "relay.univ.es", reject=RELAY_DENIED),
]

SMTP_SENDMAIL = [
    *[r for r in SMTP if "fund-univ.es" not in r["address"]],
    # sendmail-style: fund-univ.es is local, the same users in both domains.
    row("rgarcia@fund-univ.es", "local", "local", "fund-univ.es"),
    row("gramos@fund-univ.es", "local", "local", "fund-univ.es"),
    row("postmaster@fund-univ.es", "local", "local", "univ.es", rewritten=["root@univ.es"]),
    row("nobody@fund-univ.es", "local", "local", "fund-univ.es", reject=LOCAL_UNKNOWN),
]

SMTP_VIRTUAL = [
    *SMTP,
    # postfix-style: only the virtual table's users exist in fund-univ.es.
    row("gerente@fund-univ.es", "virtual_alias", "local", "univ.es",
        rewritten=["rgarcia@univ.es"]),
    row("gestion@fund-univ.es", "virtual_alias", "local", "univ.es",
        rewritten=["laurar@univ.es"]),
    row("gramos@fund-univ.es", "virtual_alias", "local", "univ.es",
        rewritten=["gramos@univ.es"]),
    row("tesorero@fund-univ.es", "virtual_alias", "smtp", "relay.univ.es",
        rewritten=["jheras@pastorro.com"]),
    row("rgarcia@fund-univ.es", "virtual_alias", "error",
        "5.1.1 User unknown in virtual alias table", reject=ALIAS_UNKNOWN),
    row("postmaster@fund-univ.es", "virtual_alias", "error",
        "5.1.1 User unknown in virtual alias table", reject=ALIAS_UNKNOWN),
]

TABLES: dict[str, list[dict[str, Any]]] = {
    "relay": RELAY,
    "relay-fund": _relay_fund("smtp.univ.es"),
    "relay-fund-moved": [
        *_relay_fund("smtp.fund-univ.es"),
        row("rgarcia@univ.es", "relay", "error", "5.1.6 User has moved to gerente@fund-univ.es",
            reject=MOVED.format("{}", "gerente@fund-univ.es")),
    ],
    "smtp": SMTP,
    "smtp-fund-sendmail": SMTP_SENDMAIL,
    "smtp-fund-virtual": SMTP_VIRTUAL,
}
VARIANTS = sorted(TABLES)


def config(variant: str) -> dict[str, Any]:
    return load_config_file(EXAMPLES / variant / "postfleet.yaml")


def addresses(variant: str) -> list[str]:
    return [r["address"] for r in TABLES[variant]]


def test_every_variant_has_its_files() -> None:
    assert sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()) == VARIANTS
    for variant in VARIANTS:
        files = {p.name for p in (EXAMPLES / variant / "postfix").iterdir()}
        assert {"main.cf", "transport"} <= files, variant
    assert "virtual" in {p.name for p in (EXAMPLES / "smtp-fund-virtual" / "postfix").iterdir()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_route_json_gives_the_table(variant: str, capsys: pytest.CaptureFixture[str]) -> None:
    config_file = EXAMPLES / variant / "postfleet.yaml"
    assert main(["route", "--config", str(config_file), "--json", *addresses(variant)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in out] == TABLES[variant]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_library_gives_the_table(variant: str) -> None:
    snapshot = snapshot_from_config(config(variant))
    for expected in TABLES[variant]:
        address = expected["address"]
        assert resolve(snapshot, address).address_class.value == expected["class"], address
        finals = final_recipients(snapshot, address)
        assert finals == expected["rewritten"], address
        route = resolve(snapshot, finals[0])
        assert route.transport == expected["transport"], address
        assert route.nexthop.strip("[]") == expected["nexthop"], address
        reply = check_recipient(
            snapshot, outside_client(snapshot), address,
            relay_restrictions=["permit_mynetworks", "permit_sasl_authenticated",
                                "reject_unauth_destination"],
            recipient_restrictions=["permit_mynetworks", "reject_unauth_destination"])
        assert (str(reply) if reply else None) == expected["reject"], address


def _probes(variant: str) -> list[str]:
    extra = ["x@localhost.univ.es", "x@smtp.univ.es", "x@relay.univ.es", "x@smtp.fund-univ.es",
             "x@a.b.depart2.univ.es", "abuse", "mailer-daemon@univ.es", "x@[192.0.2.1]"]
    return [*addresses(variant), *extra]


@pytest.mark.parametrize("variant", VARIANTS)
def test_import_postfix_routes_like_the_committed_config(variant: str) -> None:
    imported = import_postfix(EXAMPLES / variant / "postfix")
    committed, generated = route_context(config(variant)), route_context(imported.config)
    for address in _probes(variant):
        # One deliberate difference: the import keeps Postfix's default relay
        # restrictions (defer_unauth_destination: 454), postfleet's own
        # configuration answers 554.
        expected = describe(committed, address)
        if expected["reject"] == RELAY_DENIED.format(address):
            expected["reject"] = "454 4.7.1 " + expected["reject"][len("554 5.7.1 "):]
        assert describe(generated, address) == expected, address
    # Nothing in these main.cf files is silently lost: only alias_database is
    # left out, and said so; the relay restrictions written out are said too.
    notes = [w for w in imported.warnings if "alias_database" not in w]
    assert len(notes) == 1 and notes[0].startswith(
        "smtpd_relay_restrictions is not set: written out as Postfix's default ("
        "permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination)")
    assert imported.config["smtpd_relay_restrictions"] == [
        "permit_mynetworks", "permit_sasl_authenticated", "defer_unauth_destination"]


def _crd_schema(kind: str) -> dict[str, Any]:
    import yaml

    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            return schema
    raise LookupError(kind)


@pytest.mark.parametrize("variant", VARIANTS)
def test_resources_follow_the_crds_and_compile_to_the_same_routes(variant: str) -> None:
    import jsonschema

    from postfleet.operator.compile import Resource, compile_routing

    imported = import_postfix(EXAMPLES / variant / "postfix")
    schemas = {k: _crd_schema(k) for k in ("MailDomain", "Transport")}
    for res in imported.resources:
        jsonschema.validate(res, schemas[res["kind"]])
    base_cfg = {**imported.config, "routing": imported.config["operator"]["routing"]}
    compiled = compile_routing(
        [Resource(r["kind"], "mail", r["metadata"]["name"], r["spec"], f"2024-01-01T00:00:{i:02}Z")
         for i, r in enumerate(imported.resources)],
        base=snapshot_from_config(base_cfg))
    assert compiled.errors == {}
    ctx_full = route_context(imported.config)
    ctx_operator = route_context(imported.config)
    ctx_operator.snapshot = compiled.snapshot
    for address in _probes(variant):
        assert describe(ctx_operator, address) == describe(ctx_full, address), address


def test_smtp_without_compatibility_level_is_reported(tmp_path: Path) -> None:
    src = EXAMPLES / "smtp" / "postfix"
    for f in src.iterdir():
        text = f.read_text()
        if f.name == "main.cf":
            text = text.replace("compatibility_level = 3.6", "")
        (tmp_path / f.name).write_text(text)
    warnings = import_postfix(tmp_path).warnings
    assert any("no compatibility_level" in w and "relay_domains = $mydestination" in w
               for w in warnings)


def test_snapshots_are_valid_documents() -> None:
    for variant in VARIANTS:
        snapshot = snapshot_from_config(config(variant))
        assert RoutingSnapshot.from_json(snapshot.to_json()) == snapshot
