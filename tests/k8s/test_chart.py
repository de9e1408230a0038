"""charts/postfleet: helm lint --strict and helm template for each values
variant, every rendered object through kubernetes-validate --strict, and the
promises of the chart (hardened pods running `postfleet run ROLE`, probes,
Services, HPAs, PDBs, operator RBAC, NetworkPolicies, values schema).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

# Starts processes (see the slow marker in pyproject.toml).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "postfleet"
VARIANTS = ["default", "production", "univ.es-relay"]
ROLES = ["ingress-smtp", "cleanup", "qmgr", "delivery", "filter", "operator"]
VALUES_KEY = {
    "ingress-smtp": "ingressSmtp", "cleanup": "cleanup", "qmgr": "qmgr",
    "delivery": "delivery", "filter": "filter", "operator": "operator",
}
DEFAULT_ROLES = {"ingress-smtp", "cleanup", "qmgr", "delivery", "operator"}


def container(deployment):
    [only] = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env_of(deployment):
    return {e["name"]: e for e in container(deployment).get("env", [])}


def env_value(deployment, name):
    return env_of(deployment)[name]["value"]


# -- helm lint / template / kubernetes-validate --------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_strict(chart, variant):
    done = chart.lint(variant)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


def _minimum_kubernetes() -> str:
    kube = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    found = re.match(r">=\s*(\d+\.\d+)", kube)
    assert found, kube
    return found.group(1)


@pytest.mark.parametrize("kube", ["latest", "minimum"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_objects_pass_kubernetes_validate(
    chart, kubernetes_validate, tmp_path, variant, kube
):
    rendered = tmp_path / f"{variant}.yaml"
    rendered.write_text(chart.render_text(variant))
    args = [] if kube == "latest" else ["--kubernetes-version", _minimum_kubernetes()]
    done = subprocess.run(
        [str(kubernetes_validate), "--strict", *args, str(rendered)],
        capture_output=True, text=True, timeout=120,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "ERROR" not in out, out
    kinds = {doc["kind"] for doc in chart.render(variant)}
    # Every kind was really checked (only custom resources are merely warned about).
    for kind in kinds:
        assert f"passed for resource {kind.lower()}/" in out, (kind, out)


def test_kubernetes_validate_catches_a_broken_object(kubernetes_validate, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n"
        "spec:\n  replicas: two\n  selector: {matchLabels: {a: b}}\n"
        "  template:\n    metadata: {labels: {a: b}}\n"
        "    spec: {containers: [{name: x, image: x, imagePullPolice: Always}]}\n"
    )
    done = subprocess.run(
        [str(kubernetes_validate), "--strict", str(bad)], capture_output=True, text=True
    )
    assert done.returncode != 0, done.stdout


# -- the chart's layout ------------------------------------------------------------
def test_chart_layout():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for role in ROLES:
        assert (CHART / "templates" / f"{role}.yaml").exists(), role
        assert VALUES_KEY[role] in values, role
    assert values["filter"]["enabled"] is False
    assert set(values["image"]) >= {"repository", "tag", "pullPolicy"}


def test_crds_live_only_in_the_chart():
    crd_files = sorted(
        p.relative_to(REPO).as_posix()
        for p in REPO.rglob("*.y*ml")
        if not {".venv", ".git", ".tools", "node_modules"} & set(p.relative_to(REPO).parts)
        and re.search(r"^kind:\s*CustomResourceDefinition\s*$", p.read_text(errors="replace"), re.M)
    )
    assert crd_files == [
        "charts/postfleet/crds/maildomains.postfleet.io.yaml",
        "charts/postfleet/crds/transports.postfleet.io.yaml",
    ]


def test_templates_render_no_crds(chart):
    text = chart.render_text("production", crds=False)
    assert "CustomResourceDefinition" not in text
    kinds = [d["kind"] for d in chart.render("production")]
    assert kinds.count("CustomResourceDefinition") == 2


# -- Deployments -------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_deployments_run_their_role_hardened_and_probed(chart, variant):
    deployments = chart.objects(variant, "Deployment")
    expected = DEFAULT_ROLES | ({"filter"} if variant == "production" else set())
    assert set(deployments) == expected
    images = set()
    for role, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        c = container(dep)
        images.add(c["image"])
        assert c["args"] == ["run", role]
        assert "command" not in c  # the image's ENTRYPOINT is `postfleet`

        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["http"] == 8080
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = c[probe]["httpGet"]
            assert get["path"] == path, (role, probe)
            assert ports.get(get["port"], get["port"]) == 8080, (role, probe)

        for kind in ("requests", "limits"):
            assert c["resources"].get(kind), (role, kind)
        assert c["resources"]["limits"].get("memory"), role

        psc, csc = pod["securityContext"], c["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 10001
        assert psc["seccompProfile"]["type"] == "RuntimeDefault"
        assert csc["runAsNonRoot"] is True and csc["runAsUser"] == 10001
        assert csc["readOnlyRootFilesystem"] is True
        assert csc["allowPrivilegeEscalation"] is False
        assert csc["capabilities"]["drop"] == ["ALL"]
        assert not csc["capabilities"].get("add")
        assert csc["seccompProfile"]["type"] == "RuntimeDefault"

        tmp = {m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/tmp"}
        assert tmp and all(
            "emptyDir" in v for v in pod["volumes"] if v["name"] in tmp
        ), role
        # Only the operator talks to the Kubernetes API.
        assert pod["automountServiceAccountToken"] is (role == "operator"), role
        # No docker-link env vars: for a release named "postfleet" they would
        # read POSTFLEET_CLEANUP_PORT=tcp://..., inside the settings' prefix.
        assert pod["enableServiceLinks"] is False, role
        sel = dep["spec"]["selector"]["matchLabels"]
        assert sel["app.kubernetes.io/component"] == role
        assert dep["spec"]["template"]["metadata"]["labels"].items() >= sel.items()
    assert len(images) == 1, images


def test_drain_time(chart):
    deployments = chart.objects("default", "Deployment")
    for role in ("ingress-smtp", "delivery"):
        assert deployments[role]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120
    # The roles drain within the grace period, after the preStop sleep.
    assert env_value(deployments["ingress-smtp"], "POSTFLEET_DRAIN_TIMEOUT") == "105"
    assert env_value(deployments["delivery"], "POSTFLEET_DELIVERY_DRAIN_TIMEOUT") == "105"
    pre_stop = container(deployments["ingress-smtp"])["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop == ["sleep", "5"]
    # A drain time set in config wins, and is not listed twice.
    overridden = chart.objects("default", "Deployment", "--set", "config.drain_timeout=9")
    drains = [e["value"] for e in container(overridden["ingress-smtp"])["env"]
              if e["name"] == "POSTFLEET_DRAIN_TIMEOUT"]
    assert drains == ["9"]


def test_filter_renders_only_when_enabled(chart):
    assert not any(
        (d["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "filter"
        for d in chart.render("default")
    )
    enabled = chart.objects("default", "Deployment", "--set", "filter.enabled=true")
    assert container(enabled["filter"])["args"] == ["run", "filter"]
    cleanup = env_value(enabled["filter"], "POSTFLEET_CLEANUP_ADDRESS")
    assert cleanup == "mail-postfleet-cleanup:10027"
    # Enabled, the filter is every listener's content_filter.
    assert env_value(enabled["ingress-smtp"], "POSTFLEET_CONTENT_FILTER") == "filter:"
    assert "POSTFLEET_CONTENT_FILTER" not in env_of(
        chart.objects("default", "Deployment")["ingress-smtp"])


def test_filter_env_is_what_the_roles_read(chart, monkeypatch):
    """The production filter and ingress env, fed to the roles' own settings."""
    from postfleet.filter.settings import FilterSettings
    from postfleet.ingress_smtp.settings import IngressSettings

    deployments = chart.objects("production", "Deployment")
    for name in [n for n in os.environ if n.startswith("POSTFLEET_")]:
        monkeypatch.delenv(name)
    for entry in container(deployments["filter"])["env"]:
        if "value" in entry and entry["name"] != "POSTFLEET_CONFIG":
            monkeypatch.setenv(entry["name"], entry["value"])
    settings = FilterSettings()
    assert (settings.filter_transport, settings.spamd_address, settings.spam_action,
            settings.clamd_address, settings.virus_action, settings.clamd_failure_mode) == (
        "filter", "spamd.mail.svc:783", "hold", "clamd.mail.svc:3310", "reject", "defer")
    for entry in container(deployments["ingress-smtp"])["env"]:
        if "value" in entry and entry["name"] != "POSTFLEET_CONFIG":
            monkeypatch.setenv(entry["name"], entry["value"])
    ingress = IngressSettings()
    assert ingress.content_filter == "filter:"
    assert ingress.content_filter_domains == ["example.org", ".example.org"]


# -- env ----------------------------------------------------------------------------
def test_env_every_role_reads(chart):
    deployments = chart.objects("default", "Deployment")
    for role, dep in deployments.items():
        env = env_of(dep)
        assert env["POSTFLEET_HTTP_HOST"]["value"] == "0.0.0.0", role
        assert env["POSTFLEET_HTTP_PORT"]["value"] == "8080", role
        assert env["POSTFLEET_NATS_URL"]["value"] == "nats://nats:4222", role
        # The operator never touches the queue store.
        assert ("POSTFLEET_DATABASE_URL" in env) is (role != "operator"), role
        names = [e["name"] for e in container(dep)["env"]]
        assert len(names) == len(set(names)), (role, names)

    ingress = deployments["ingress-smtp"]
    listeners = json.loads(env_value(ingress, "POSTFLEET_LISTENERS"))
    assert sorted((x["name"], x["address"], x["port"]) for x in listeners) == [
        ("smtp", "0.0.0.0", 2525), ("smtps", "0.0.0.0", 2465), ("submission", "0.0.0.0", 2587),
    ]
    # No PROXY header expected, no TLS: Postfix's defaults, and smtps without a
    # certificate is not put in wrapper mode (the role would refuse to start).
    assert not {"POSTFLEET_SMTPD_UPSTREAM_PROXY_PROTOCOL", "POSTFLEET_PROXY_PROTOCOL",
                "POSTFLEET_SMTPD_TLS_CERT_FILE", "POSTFLEET_SMTPD_TLS_SECURITY_LEVEL"} & set(
        env_of(ingress))
    assert not any("overrides" in x for x in listeners)
    assert env_value(ingress, "POSTFLEET_CLEANUP_ADDRESS") == "mail-postfleet-cleanup:10027"
    assert env_value(deployments["cleanup"], "POSTFLEET_CLEANUP_LISTEN") == "0.0.0.0:10027"

    operator = env_of(deployments["operator"])
    assert operator["POSTFLEET_OPERATOR_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.namespace"
    )
    assert operator["POSTFLEET_OPERATOR_CLUSTERWIDE"]["value"] == "false"
    assert operator["POSTFLEET_OPERATOR_STANDALONE"]["value"] == "true"


def test_env_production(chart):
    deployments = chart.objects("production", "Deployment")
    ingress = deployments["ingress-smtp"]
    env = env_of(ingress)
    assert env["POSTFLEET_MYHOSTNAME"]["value"] == "mx1.example.org"
    assert env["POSTFLEET_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "postfleet-database", "key": "url"}
    assert env["POSTFLEET_NATS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "postfleet-nats", "key": "url"}
    # The load balancer sends a PROXY header: Postfix's smtpd_upstream_proxy_protocol.
    assert env["POSTFLEET_SMTPD_UPSTREAM_PROXY_PROTOCOL"]["value"] == "haproxy"
    assert "POSTFLEET_PROXY_PROTOCOL" not in env

    # TLS: a cert-manager style Secret (tls.crt / tls.key) mounted read-only;
    # the level is the one `config` sets; smtps speaks TLS from the first byte.
    assert env["POSTFLEET_SMTPD_TLS_SECURITY_LEVEL"]["value"] == "may"
    listeners = {x["name"]: x for x in json.loads(env["POSTFLEET_LISTENERS"]["value"])}
    assert listeners["smtps"]["overrides"] == {"smtpd_tls_wrappermode": True}
    assert "overrides" not in listeners["smtp"] and "overrides" not in listeners["submission"]
    cert, key = (env[f"POSTFLEET_SMTPD_TLS_{k}_FILE"]["value"] for k in ("CERT", "KEY"))
    mount = next(m for m in container(ingress)["volumeMounts"] if cert.startswith(m["mountPath"]))
    assert mount["readOnly"] is True
    assert Path(cert).name == "tls.crt" and Path(key).name == "tls.key"
    volume = next(v for v in ingress["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "mx1-example-org-tls"

    # config: -> POSTFLEET_<NAME>; a role's own config on top of the global one.
    assert env["POSTFLEET_MESSAGE_SIZE_LIMIT"]["value"] == "52428800"
    assert json.loads(env["POSTFLEET_MYNETWORKS"]["value"]) == ["127.0.0.0/8", "10.0.0.0/8"]
    assert env["POSTFLEET_SMTPD_CLIENT_CONNECTION_COUNT_LIMIT"]["value"] == "50"
    assert "POSTFLEET_SMTPD_CLIENT_CONNECTION_COUNT_LIMIT" not in env_of(deployments["qmgr"])
    delivery = env_of(deployments["delivery"])
    assert delivery["POSTFLEET_DEFAULT_DESTINATION_CONCURRENCY_LIMIT"]["value"] == "20"

    # postfleet.yaml from a ConfigMap, named by POSTFLEET_CONFIG.
    [configmap] = chart.objects("production", "ConfigMap").values()
    content = yaml.safe_load(configmap["data"]["postfleet.yaml"])
    assert content["smtpd_banner"] == "$myhostname ESMTP"
    for dep in deployments.values():
        path = env_value(dep, "POSTFLEET_CONFIG")
        mount = next(m for m in container(dep)["volumeMounts"] if m["mountPath"] == path)
        assert mount["subPath"] == "postfleet.yaml"
        volume = next(v for v in dep["spec"]["template"]["spec"]["volumes"]
                      if v["name"] == mount["name"])
        assert volume["configMap"]["name"] == configmap["metadata"]["name"]
        assert "checksum/config" in dep["spec"]["template"]["metadata"]["annotations"]


def test_tls_secret_defaults_the_level_and_keeps_overrides(chart):
    deployments = chart.objects(
        "default", "Deployment", "--set", "ingressSmtp.tls.secretName=mx-tls",
        "--set", "ingressSmtp.listeners.submission.overrides.smtpd_tls_security_level=encrypt",
        "--set", "ingressSmtp.listeners.smtps.overrides.smtpd_tls_wrappermode=false",
    )
    env = env_of(deployments["ingress-smtp"])
    # A certificate alone would enable nothing in Postfix; the chart asks for "may".
    assert env["POSTFLEET_SMTPD_TLS_SECURITY_LEVEL"]["value"] == "may"
    listeners = {x["name"]: x for x in json.loads(env["POSTFLEET_LISTENERS"]["value"])}
    assert listeners["submission"]["overrides"] == {"smtpd_tls_security_level": "encrypt"}
    assert listeners["smtps"]["overrides"] == {"smtpd_tls_wrappermode": False}  # theirs wins

    configured = chart.objects(
        "default", "Deployment", "--set", "ingressSmtp.tls.secretName=mx-tls",
        "--set", "ingressSmtp.config.smtpd_tls_security_level=encrypt",
    )
    levels = [e["value"] for e in container(configured["ingress-smtp"])["env"]
              if e["name"] == "POSTFLEET_SMTPD_TLS_SECURITY_LEVEL"]
    assert levels == ["encrypt"]


def test_delivery_mounts_the_operators_password_table(chart, monkeypatch):
    deployments = chart.objects("default", "Deployment")
    delivery, operator = deployments["delivery"], deployments["operator"]
    secret = env_of(operator)["POSTFLEET_SASL_SECRET_NAME"]["value"]
    assert env_of(operator)["POSTFLEET_SASL_SECRET_NAMESPACE"]["value"] == "postfleet"
    pod = delivery["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "sasl"]
    assert volume["secret"] == {"secretName": secret, "optional": True, "defaultMode": 0o440}
    assert {"name": "sasl", "mountPath": "/etc/postfleet/sasl", "readOnly": True} in (
        container(delivery)["volumeMounts"])
    env = env_of(delivery)
    from postfleet.delivery.settings import DeliverySettings
    for name in ("POSTFLEET_SMTP_SASL_AUTH_ENABLE", "POSTFLEET_SMTP_SASL_PASSWORD_MAPS"):
        monkeypatch.setenv(name, env[name]["value"])
    settings = DeliverySettings()
    assert settings.smtp_sasl_auth_enable
    assert settings.smtp_sasl_password_maps == "texthash:/etc/postfleet/sasl/sasl_passwd"
    # A site's own table wins; without the operator there is nothing to mount.
    for extra, maps in ((("--set", "delivery.config.smtp_sasl_password_maps=texthash:/x"),
                         ["texthash:/x"]), (("--set", "operator.enabled=false"), [])):
        other = chart.objects("default", "Deployment", *extra)["delivery"]
        assert [e["value"] for e in container(other)["env"]
                if e["name"] == "POSTFLEET_SMTP_SASL_PASSWORD_MAPS"] == maps
        assert "sasl" not in [v["name"] for v in other["spec"]["template"]["spec"]["volumes"]]


def test_cleanup_mounts_the_operators_dkim_keys(chart, monkeypatch):
    deployments = chart.objects("default", "Deployment")
    cleanup, operator = deployments["cleanup"], deployments["operator"]
    secret = env_of(operator)["POSTFLEET_DKIM_SECRET_NAME"]["value"]
    pod = cleanup["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "dkim"]
    assert volume["secret"] == {"secretName": secret, "optional": True, "defaultMode": 0o440}
    assert {"name": "dkim", "mountPath": "/etc/postfleet/dkim", "readOnly": True} in (
        container(cleanup)["volumeMounts"])
    from postfleet.cleanup.settings import CleanupSettings
    monkeypatch.setenv("POSTFLEET_DKIM_KEY_DIRECTORY",
                       env_of(cleanup)["POSTFLEET_DKIM_KEY_DIRECTORY"]["value"])
    assert CleanupSettings().dkim_key_directory == "/etc/postfleet/dkim"
    # A site's own directory wins; without the operator there is nothing to mount.
    for extra, directory in ((("--set", "cleanup.config.dkim_key_directory=/keys"), ["/keys"]),
                             (("--set", "operator.enabled=false"), [])):
        other = chart.objects("default", "Deployment", *extra)["cleanup"]
        assert [e["value"] for e in container(other)["env"]
                if e["name"] == "POSTFLEET_DKIM_KEY_DIRECTORY"] == directory
        assert "dkim" not in [v["name"] for v in other["spec"]["template"]["spec"]["volumes"]]


def test_ingress_env_is_what_the_role_reads(chart, monkeypatch):
    """The production env, fed to the role's own settings: names and values parse."""
    from postfleet.ingress_smtp.settings import IngressSettings

    ingress = chart.objects("production", "Deployment")["ingress-smtp"]
    for name in [n for n in os.environ if n.startswith("POSTFLEET_")]:
        monkeypatch.delenv(name)
    for entry in container(ingress)["env"]:
        if "value" in entry and entry["name"] != "POSTFLEET_CONFIG":
            monkeypatch.setenv(entry["name"], entry["value"])
    settings = IngressSettings()
    params = {x.name: settings.params_for(x) for x in settings.listeners}
    assert params["smtp"].tls_level() == params["submission"].tls_level() == "may"
    assert params["smtps"].smtpd_tls_wrappermode and params["smtps"].tls_level() == "encrypt"
    assert params["smtps"].tls_key_path() == "/etc/postfleet/tls/tls.key"
    assert all(p.smtpd_upstream_proxy_protocol == "haproxy" for p in params.values())


def test_submission_and_smtps_require_auth_with_tls_and_sasl(chart, monkeypatch):
    """Postfix's master.cf submission and smtps services as the chart's defaults."""
    from postfleet.ingress_smtp.settings import IngressSettings

    deployments = chart.objects(
        "default", "Deployment", "--set", "ingressSmtp.tls.secretName=mx-tls",
        "--set", "ingressSmtp.sasl.usersSecret.name=smtp-users")
    ingress = deployments["ingress-smtp"]
    env = env_of(ingress)
    listeners = {x["name"]: x for x in json.loads(env["POSTFLEET_LISTENERS"]["value"])}
    relay = "permit_sasl_authenticated, reject"
    assert listeners["submission"]["overrides"] == {
        "smtpd_tls_security_level": "encrypt", "smtpd_sasl_auth_enable": True,
        "smtpd_relay_restrictions": relay}
    assert listeners["smtps"]["overrides"] == {
        "smtpd_tls_wrappermode": True, "smtpd_sasl_auth_enable": True,
        "smtpd_relay_restrictions": relay}
    assert "overrides" not in listeners["smtp"]  # port 25 stays as it was
    assert env["POSTFLEET_SMTPD_SASL_TYPE"]["value"] == "builtin"
    path = env["POSTFLEET_SMTPD_SASL_PATH"]["value"]
    mount = next(m for m in container(ingress)["volumeMounts"]
                 if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in ingress["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == mount["name"])
    assert mount["readOnly"] and volume["secret"]["secretName"] == "smtp-users"
    assert volume["secret"]["items"] == [{"key": "users", "path": Path(path).name}]
    # ... and the role reads them as meant.
    for name in [n for n in os.environ if n.startswith("POSTFLEET_")]:
        monkeypatch.delenv(name)
    for entry in container(ingress)["env"]:
        if "value" in entry:
            monkeypatch.setenv(entry["name"], entry["value"])
    settings = IngressSettings()
    params = {x.name: settings.params_for(x) for x in settings.listeners}
    assert params["submission"].auth_needs_tls() and params["smtps"].smtpd_tls_wrappermode
    assert not params["smtp"].smtpd_sasl_auth_enable
    assert params["submission"].smtpd_relay_restrictions == ["permit_sasl_authenticated", "reject"]

    dovecot = chart.objects(
        "default", "Deployment", "--set", "ingressSmtp.tls.secretName=mx-tls",
        "--set", "ingressSmtp.sasl.type=dovecot",
        "--set", "ingressSmtp.sasl.dovecotPath=inet:dovecot-auth:12345")
    env = env_of(dovecot["ingress-smtp"])
    assert env["POSTFLEET_SMTPD_SASL_PATH"]["value"] == "inet:dovecot-auth:12345"
    # Without SASL (or TLS) the submission ports are left as they were.
    plain = chart.objects("default", "Deployment", "--set", "ingressSmtp.tls.secretName=mx-tls")
    listeners = json.loads(env_value(plain["ingress-smtp"], "POSTFLEET_LISTENERS"))
    assert not any("smtpd_sasl_auth_enable" in x.get("overrides", {}) for x in listeners)


def test_listener_overrides_reach_the_role(chart):
    deployments = chart.objects(
        "default", "Deployment", "--set",
        "ingressSmtp.listeners.submission.overrides.smtpd_recipient_restrictions="
        "{permit_sasl_authenticated,reject}",
    )
    listeners = json.loads(env_value(deployments["ingress-smtp"], "POSTFLEET_LISTENERS"))
    by_name = {x["name"]: x for x in listeners}
    assert by_name["submission"]["overrides"] == {
        "smtpd_recipient_restrictions": ["permit_sasl_authenticated", "reject"]}
    assert "overrides" not in by_name["smtp"]


# -- Services, HPA, PDB ------------------------------------------------------------------
def test_services(chart):
    default = chart.objects("default", "Service")
    assert set(default) == {"ingress-smtp", "cleanup", "qmgr"}
    deployments = chart.objects("default", "Deployment")

    smtp = default["ingress-smtp"]["spec"]
    ports = {p["port"]: p["targetPort"] for p in smtp["ports"]}
    ingress = container(deployments["ingress-smtp"])
    container_ports = {p["name"]: p["containerPort"] for p in ingress["ports"]}
    assert {port: container_ports[target] for port, target in ports.items()} == {
        25: 2525, 587: 2587, 465: 2465}
    assert smtp["type"] == "ClusterIP" and "externalTrafficPolicy" not in smtp

    assert default["cleanup"]["spec"]["type"] == "ClusterIP"
    assert [p["port"] for p in default["cleanup"]["spec"]["ports"]] == [10027]
    assert default["qmgr"]["spec"]["type"] == "ClusterIP"
    assert [p["port"] for p in default["qmgr"]["spec"]["ports"]] == [8080]
    for role, svc in default.items():
        assert svc["spec"]["selector"] == deployments[role]["spec"]["selector"]["matchLabels"]

    prod = chart.objects("production", "Service")["ingress-smtp"]
    assert prod["spec"]["type"] == "LoadBalancer"
    assert prod["spec"]["externalTrafficPolicy"] == "Local"
    assert prod["metadata"]["annotations"][
        "service.beta.kubernetes.io/aws-load-balancer-proxy-protocol"] == "*"


def test_autoscaling(chart):
    assert chart.objects("default", "HorizontalPodAutoscaler") == {}
    default = chart.objects("default", "Deployment")
    assert default["ingress-smtp"]["spec"]["replicas"] == 2

    hpas = chart.objects("production", "HorizontalPodAutoscaler")
    assert set(hpas) == {"ingress-smtp", "delivery", "qmgr", "filter"}
    deployments = chart.objects("production", "Deployment")
    for role, hpa in hpas.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment"
        assert target["name"] == deployments[role]["metadata"]["name"]
        # The HPA owns the replica count.
        assert "replicas" not in deployments[role]["spec"], role
    assert hpas["ingress-smtp"]["spec"]["minReplicas"] == 3
    assert deployments["cleanup"]["spec"]["replicas"] == 3
    # The ingress replicas of the production values: 3, the HPA's floor.
    assert yaml.safe_load((CHART / "ci" / "production-values.yaml").read_text())[
        "ingressSmtp"]["replicas"] == 3


@pytest.mark.parametrize("variant", ["default", "production"])
def test_disruption_budgets(chart, variant):
    pdbs = chart.objects(variant, "PodDisruptionBudget")
    deployments = chart.objects(variant, "Deployment")
    assert set(pdbs) == set(deployments) - {"operator"}
    for role, pdb in pdbs.items():
        labels = deployments[role]["spec"]["template"]["metadata"]["labels"]
        assert labels.items() >= pdb["spec"]["selector"]["matchLabels"].items()
    if variant == "production":
        assert pdbs["ingress-smtp"]["spec"]["minAvailable"] == 2


# -- the operator ----------------------------------------------------------------------
def _rules(chart, variant, kind):
    return [rule for obj in chart.objects(variant, kind).values() for rule in obj["rules"]]


@pytest.mark.parametrize("variant", ["default", "production"])
def test_operator_rbac_is_what_kopf_needs(chart, variant):
    deployments = chart.objects(variant, "Deployment")
    operator = deployments["operator"]
    assert operator["spec"]["replicas"] == 1
    assert operator["spec"]["strategy"] == {"type": "Recreate"}
    [account] = chart.objects(variant, "ServiceAccount").values()
    assert operator["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]

    cluster_wide = variant == "production"  # operator.watchAllNamespaces
    roles = chart.objects(variant, "Role")
    # Namespaced: the custom resources and the password table's Secret;
    # cluster-wide: only that Secret.
    assert len(roles) == 1
    assert ("maildomains" in roles["operator"]["rules"][0]["resources"]) is not cluster_wide
    granted: dict[tuple[str, str], set[str]] = {}
    for kind in ("Role", "ClusterRole"):
        for rule in _rules(chart, variant, kind):
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == {
        ("postfleet.io", "maildomains"): {"get", "list", "watch", "patch"},
        ("postfleet.io", "transports"): {"get", "list", "watch", "patch"},
        ("postfleet.io", "maildomains/status"): {"get", "patch"},
        ("postfleet.io", "transports/status"): {"get", "patch"},
        ("", "events"): {"create"},
        ("", "secrets"): {"get", "create", "patch"},  # authSecretRef, the password table
        ("", "namespaces"): {"list", "watch"},
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    }
    cluster_resources = {
        r for rule in _rules(chart, variant, "ClusterRole") for r in rule["resources"]}
    assert ("maildomains" in cluster_resources) is cluster_wide

    bindings = [*chart.objects(variant, "RoleBinding").values(),
                *chart.objects(variant, "ClusterRoleBinding").values()]
    assert len(bindings) == 2
    subject = {"kind": "ServiceAccount", "name": account["metadata"]["name"],
               "namespace": "postfleet"}
    for binding in bindings:
        assert binding["subjects"] == [subject]


# -- NetworkPolicies -------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["default", "production"])
def test_network_policies(chart, variant):
    policies = chart.objects(variant, "NetworkPolicy")
    deployments = chart.objects(variant, "Deployment")
    assert set(policies) == set(deployments)

    def open_ports(policy):
        """Ports reachable from anywhere (a rule without `from`)."""
        return {p["port"] for r in policy["spec"]["ingress"] if "from" not in r
                for p in r.get("ports", [])}

    assert open_ports(policies["ingress-smtp"]) == {2525, 2587, 2465}
    for role in set(policies) - {"ingress-smtp"}:
        assert open_ports(policies[role]) == set(), role

    grpc = [r for r in policies["cleanup"]["spec"]["ingress"]
            if any(p["port"] == "grpc" for p in r["ports"])]
    clients = [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
               for p in grpc[0]["from"]]
    assert clients == ["ingress-smtp", "filter"]

    for role, policy in policies.items():
        egress = policy["spec"]["egress"]
        restricted = variant == "production" and role not in ("delivery", "operator")
        assert ({} not in egress) is restricted, (role, egress)


# -- Prometheus and Grafana --------------------------------------------------------------
def test_service_monitor_and_dashboard_are_off_by_default_and_on_by_toggle(chart):
    kinds = {d["kind"] for d in chart.render("default")}
    assert "ServiceMonitor" not in kinds
    assert not any("grafana_dashboard" in (d["metadata"].get("labels") or {})
                   for d in chart.render("default"))
    on = ("--set", "metrics.serviceMonitor.enabled=true",
          "--set", "metrics.serviceMonitor.labels.release=kube-prometheus-stack",
          "--set", "metrics.grafanaDashboard.enabled=true")
    [monitor] = chart.objects("default", "ServiceMonitor", *on).values()
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    [endpoint] = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    service = chart.objects("default", "Service", *on)["metrics"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    # the metrics Service selects every role's pods, on their HTTP port
    for role, deployment in chart.objects("default", "Deployment", *on).items():
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items(), role
        assert any(p["name"] == "http" for p in container(deployment)["ports"]), role
    [dashboard] = [d for d in chart.objects("default", "ConfigMap", *on).values()
                   if (d["metadata"].get("labels") or {}).get("grafana_dashboard") == "1"]
    assert json.loads(dashboard["data"]["postfleet.json"]) == json.loads(
        (CHART / "dashboards" / "postfleet.json").read_text())


# -- values.schema.json -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"ingressSmtp": {"replicas": "three"}}, "/ingressSmtp/replicas"),
        ({"ingresSmtp": {"replicas": 3}}, "ingresSmtp"),
        ({"ingressSmtp": {"service": {"type": "Balancer"}}}, "/ingressSmtp/service/type"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"cleanup": {"grpcPort": 80}}, "/cleanup/grpcPort"),
        ({"config": {"Message-Size": 1}}, "Message-Size"),
    ],
)
def test_values_schema_rejects_bad_values(chart, tmp_path, values, complaint):
    bad = tmp_path / "bad-values.yaml"
    bad.write_text(yaml.safe_dump(values))
    done = chart.template("-f", str(bad))
    assert done.returncode != 0, done.stdout[:500]
    assert complaint in done.stderr, done.stderr


def test_values_schema_covers_every_value():
    """Every key of values.yaml is described by the schema (no open objects)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    free = {"nats", "postgresql", "global"}  # passed on to the dependencies

    def resolve(node):
        while "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
        return node

    def walk(node, value, path):
        node = resolve(node)
        if path in free:
            return
        if isinstance(value, dict) and node.get("properties") is not None:
            assert node.get("additionalProperties") is False, path
            for key, sub in value.items():
                assert key in node["properties"], f"{path}.{key} is not in the schema"
                walk(node["properties"][key], sub, f"{path}.{key}".lstrip("."))

    walk(schema, values, "")


# -- optional dependencies, offline --------------------------------------------------
def test_dependencies_are_optional_and_offline(chart):
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    deps = {d["name"]: d for d in meta["dependencies"]}
    assert deps["nats"]["repository"] == "https://nats-io.github.io/k8s/helm/charts/"
    assert deps["nats"]["condition"] == "nats.enabled"
    assert deps["postgresql"]["condition"] == "postgresql.enabled"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["nats"]["enabled"] is False and values["postgresql"]["enabled"] is False
    # Disabled, they render nothing (the lint/template tests above pass offline);
    # enabled without `helm dependency update`, helm fails and says what to do.
    for dep in deps:
        done = chart.template("--set", f"{dep}.enabled=true")
        assert done.returncode != 0
        assert "helm dependency update" in done.stderr, done.stderr


def test_placeholder_archives_match_their_sources():
    sources = REPO / "charts" / "offline-placeholders"
    for dep in ("nats", "postgresql"):
        archive = CHART / "charts" / f"{dep}-0.0.0-placeholder.tgz"
        with tarfile.open(archive) as tar:
            packed = {
                m.name: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
                for m in tar.getmembers() if m.isfile()
            }
        on_disk = {
            f"{dep}/{p.relative_to(sources / dep).as_posix()}": p.read_text()
            for p in (sources / dep).rglob("*") if p.is_file()
        }
        # helm package rewrites Chart.yaml: compare it as data.
        meta = f"{dep}/Chart.yaml"
        assert yaml.safe_load(packed.pop(meta)) == yaml.safe_load(on_disk.pop(meta)), (
            f"rebuild with charts/offline-placeholders/build.sh ({dep})")
        assert packed == on_disk, f"rebuild with charts/offline-placeholders/build.sh ({dep})"


def test_dependencies_when_enabled_wire_the_roles(chart, tmp_path):
    """With the real charts in place (empty stand-ins here), the roles find them."""
    copy = tmp_path / "postfleet"
    shutil.copytree(CHART, copy)
    for archive in (copy / "charts").glob("*-placeholder.tgz"):
        archive.unlink()
    for dep, version in (("nats", "1.2.0"), ("postgresql", "16.0.0")):
        (copy / "charts" / dep).mkdir()
        (copy / "charts" / dep / "Chart.yaml").write_text(
            f"apiVersion: v2\nname: {dep}\nversion: {version}\n")
    done = chart.run(
        "template", "mail", str(copy), "--namespace", "postfleet",
        "--set", "nats.enabled=true", "--set", "postgresql.enabled=true",
    )
    assert done.returncode == 0, done.stderr
    deployments = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "Deployment"
    }
    env = env_of(deployments["qmgr"])
    assert env["POSTFLEET_NATS_URL"]["value"] == "nats://mail-nats:4222"
    assert env["POSTFLEET_DATABASE_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "mail-postgresql", "key": "password"}
    assert env["POSTFLEET_DATABASE_URL"]["value"] == (
        "postgresql+asyncpg://postfleet:$(POSTFLEET_DATABASE_PASSWORD)"
        "@mail-postgresql:5432/postfleet")
    names = [e["name"] for e in container(deployments["qmgr"])["env"]]
    # $(VAR) expands only variables defined earlier in the list.
    assert names.index("POSTFLEET_DATABASE_PASSWORD") < names.index("POSTFLEET_DATABASE_URL")
