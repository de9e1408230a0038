"""The MailDomain and Transport CRDs: their shape, and the example resources
of examples/k8s checked against each CRD's own openAPIV3Schema with
jsonschema (kubernetes-validate only warns about custom resources).

The schema is checked as the API server would with strict field validation
(`kubectl apply --validate=strict`): an unknown field is an error, unless
the schema preserves unknown fields there.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "k8s"
GROUP, VERSION = "postfleet.io", "v1alpha1"


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields forbidden wherever Kubernetes would reject them."""
    out = copy.deepcopy(schema)

    def walk(node: dict[str, Any], is_metadata: bool = False) -> None:
        if node.get("type") == "object" and "properties" in node and not is_metadata:
            if not node.get("x-kubernetes-preserve-unknown-fields"):
                node.setdefault("additionalProperties", False)
        for name, sub in (node.get("properties") or {}).items():
            walk(sub, is_metadata=node is out and name == "metadata")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"])
        if isinstance(node.get("items"), dict):
            walk(node["items"])

    walk(out)
    return out


@pytest.fixture(scope="module")
def validators(crd_schemas):
    out = {}
    for kind, crd in crd_schemas.items():
        [version] = [v for v in crd["spec"]["versions"] if v["name"] == VERSION]
        schema = strict(version["schema"]["openAPIV3Schema"])
        jsonschema.Draft7Validator.check_schema(schema)
        out[kind] = jsonschema.Draft7Validator(
            schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
        )
    return out


def errors(validators, resource: dict[str, Any]) -> list[str]:
    assert resource["apiVersion"] == f"{GROUP}/{VERSION}"
    validator = validators[resource["kind"]]
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(resource)
    ]


def example_resources() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and str(doc.get("apiVersion", "")).startswith(f"{GROUP}/"):
                found.append((f"{path.relative_to(REPO)}:{doc['metadata']['name']}", doc))
    return found


# -- the CRDs themselves ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "plural", "short", "columns"),
    [
        ("MailDomain", "maildomains", "md", {"Domain": ".spec.domain", "Class": ".spec.class",
                                             "DKIM": ".status.dkim.signing"}),
        ("Transport", "transports", "tr", {
            "Match": ".spec.match", "Transport": ".spec.transport",
            "Nexthop": ".spec.nexthop.host"}),
    ],
)
def test_crd_shape(crd_schemas, kind, plural, short, columns):
    crd = crd_schemas[kind]
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{plural}.{GROUP}"
    assert spec["group"] == GROUP and spec["scope"] == "Namespaced"
    assert spec["names"]["plural"] == plural and short in spec["names"]["shortNames"]
    [version] = spec["versions"]
    assert version["name"] == VERSION and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}

    printed = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert printed["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert printed["Age"] == {
        "name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    for name, path in columns.items():
        assert printed[name]["jsonPath"] == path

    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    dkim = {"dkim"} if kind == "MailDomain" else set()
    assert set(status) == {"conditions", "snapshotVersion", "observedGeneration", "message",
                           *dkim}
    condition = status["conditions"]["items"]
    assert set(condition["required"]) == {"type", "status"}


def test_maildomain_spec(crd_schemas):
    spec = crd_schemas["MailDomain"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"]["spec"]
    assert set(spec["required"]) == {"domain", "class"}
    assert spec["properties"]["class"]["enum"] == [
        "local", "relay", "virtualAlias", "virtualMailbox"]
    assert spec["properties"]["includeSubdomains"]["type"] == "boolean"
    assert spec["properties"]["aliases"]["additionalProperties"]["type"] == "array"
    dkim = spec["properties"]["dkim"]
    assert set(dkim["required"]) == {"selector", "secretRef"}
    assert dkim["properties"]["algorithm"]["enum"] == ["rsa-sha256", "ed25519-sha256"]


def test_transport_spec(crd_schemas):
    spec = crd_schemas["Transport"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"]["spec"]
    props = spec["properties"]
    assert set(spec["required"]) == {"match", "transport"}
    assert props["transport"]["pattern"] == "^[a-z][a-z0-9-]*$"
    assert props["tls"]["enum"] == [
        "none", "may", "encrypt", "dane", "dane-only", "fingerprint", "verify", "secure"]
    nexthop = props["nexthop"]["properties"]
    assert (nexthop["port"]["minimum"], nexthop["port"]["maximum"]) == (1, 65535)
    assert nexthop["mx"]["default"] is True
    assert props["concurrencyLimit"]["minimum"] == 1
    assert props["authSecretRef"]["required"] == ["name"]


# -- the examples ----------------------------------------------------------------------------
def test_examples_exist():
    kinds = {doc["kind"] for _, doc in example_resources()}
    assert kinds == {"MailDomain", "Transport"}


@pytest.mark.parametrize(("where", "resource"), example_resources(), ids=lambda v: str(v))
def test_example_is_valid(validators, where, resource):
    assert errors(validators, resource) == [], where


def test_univ_es_relay_is_the_tutorials(validators):
    """examples/k8s/univ.es-relay is section 2.1's relay.univ.es, entry by entry."""
    relay = EXAMPLES / "univ.es-relay"
    docs = [d for f in ("maildomains.yaml", "transports.yaml")
            for d in yaml.safe_load_all((relay / f).read_text()) if d]
    domains = {(d["spec"]["domain"], d["spec"]["class"], d["spec"].get("includeSubdomains", False))
               for d in docs if d["kind"] == "MailDomain"}
    assert domains == {
        ("univ.es", "relay", True),            # relay_domains = $mydomain
        ("relay.univ.es", "local", False),     # mydestination = $myhostname
        ("localhost.univ.es", "local", False),  # ... localhost.$mydomain
    }

    def entry(spec):
        """The transport(5) line the resource stands for."""
        hop = spec.get("nexthop")
        if not hop:
            return spec["match"], f"{spec['transport']}:"
        host = hop["host"] if hop.get("mx", True) else f"[{hop['host']}]"
        return spec["match"], f"{spec['transport']}:{host}"

    table = {entry(d["spec"]) for d in docs if d["kind"] == "Transport"}
    assert table == {
        ("relay.univ.es", "local:"),
        ("localhost.univ.es", "local:"),
        ("univ.es", "smtp:[smtp.univ.es]"),
        ("depart1.univ.es", "smtp:[smtp.depart1.univ.es]"),
        (".depart1.univ.es", "smtp:[smtp.depart1.univ.es]"),
        ("depart2.univ.es", "smtp:[smtp.depart2.univ.es]"),
        (".depart2.univ.es", "smtp:[smtp.depart2.univ.es]"),
    }


# -- what the schemas reject ---------------------------------------------------------------
def maildomain(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MailDomain",
            "metadata": {"name": "x"}, "spec": spec}


def transport(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Transport",
            "metadata": {"name": "x"}, "spec": spec}


def test_invalid_maildomain_fails(validators):
    """A bad domain and an unknown class: both reported."""
    found = errors(validators, maildomain(domain="univ..es!", **{"class": "hosted"}))
    assert any(e.startswith("spec/domain:") for e in found), found
    assert any(e.startswith("spec/class:") for e in found), found


@pytest.mark.parametrize(
    ("resource", "where"),
    [
        (maildomain(domain="-univ.es", **{"class": "relay"}), "spec/domain"),
        (maildomain(domain="univ.es"), "spec"),  # class is required
        (maildomain(domain="univ.es", **{"class": "relay"}, includeSubdomains="yes"),
         "spec/includeSubdomains"),
        (maildomain(domain="univ.es", **{"class": "virtualAlias"},
                    aliases={"info@univ.es": []}), "spec/aliases/info@univ.es"),
        (maildomain(domain="univ.es", **{"class": "relay"}, subdomains=True), "spec"),
        (transport(match="univ.es"), "spec"),  # transport is required
        (transport(match="@univ.es", transport="smtp"), "spec/match"),
        (transport(match="univ.es", transport="SMTP"), "spec/transport"),
        (transport(match="univ.es", transport="smtp", nexthop={"host": "a.b", "port": 70000}),
         "spec/nexthop/port"),
        (transport(match="univ.es", transport="smtp", nexthop={"host": "[smtp.univ.es]"}),
         "spec/nexthop/host"),
        (transport(match="univ.es", transport="smtp", tls="maybe"), "spec/tls"),
        (transport(match="univ.es", transport="smtp", concurrencyLimit=0),
         "spec/concurrencyLimit"),
        (transport(match="univ.es", transport="smtp", authSecretRef={"key": "k"}),
         "spec/authSecretRef"),
        (transport(match="univ.es", transport="smtp", nextHop={"host": "a"}), "spec"),
    ],
    ids=lambda v: v if isinstance(v, str) else v["kind"],
)
def test_invalid_resources_fail(validators, resource, where):
    found = errors(validators, resource)
    assert any(e.split(":")[0] == where for e in found), found


@pytest.mark.parametrize(
    "resource",
    [
        transport(match="*", transport="error", message="mail to this site is not accepted"),
        transport(match="user+ext@univ.es", transport="lmtp",
                  nexthop={"host": "10.0.0.7", "port": 24, "mx": False}),
        transport(match=".univ.es", transport="smtp", nexthop={"host": "ipv6:2001:db8::1"},
                  tls="dane", authSecretRef={"name": "relay-auth"}, concurrencyLimit=5),
        transport(match="univ.es", transport="amavis"),  # a content filter's name
        maildomain(domain="fund-univ.es", **{"class": "virtualAlias"},
                   aliases={"info@fund-univ.es": ["root", "ana@univ.es"],
                            "@fund-univ.es": ["postmaster@univ.es"]}),
        maildomain(domain="localhost", **{"class": "local"}),
    ],
    ids=lambda r: f"{r['kind']}:{r['spec'].get('match') or r['spec'].get('domain')}",
)
def test_valid_resources_pass(validators, resource):
    assert errors(validators, resource) == []
