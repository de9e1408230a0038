"""The Grafana dashboard shipped in the chart (dashboards/postfleet.json):
it loads as a dashboard, and every panel's queries name only metrics the
roles export (read from their Prometheus registry, the roles imported) --
postfix_exporter's names where it has them."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

DASHBOARD = Path(__file__).resolve().parents[2] / "charts" / "postfleet" / "dashboards" / \
    "postfleet.json"
ROLE_MODULES = ["postfleet.ingress_smtp.main", "postfleet.cleanup.main", "postfleet.qmgr.main",
                "postfleet.delivery.main", "postfleet.filter.main"]
# A PromQL word that is a metric of ours (functions, labels and keywords are not).
METRIC = re.compile(r"\b(postfix_[a-z_]+|postfleet_[a-z_]+)\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
            "gauge": ("",), "summary": ("_count", "_sum", "")}


def exported() -> set[str]:
    for module in ROLE_MODULES:
        importlib.import_module(module)
    names = set()
    for family in REGISTRY.collect():
        names.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
    return names


def test_the_dashboard_loads_and_queries_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["panels"]
    names = exported()
    seen = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = METRIC.findall(target["expr"])
            assert used, (panel["title"], target["expr"])
            unknown = [m for m in used if m not in names]
            assert unknown == [], (panel["title"], unknown)
            seen.update(used)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert set(METRIC.findall(variable["definition"])) <= names
    # what a postfix_exporter user looks for is on the board
    assert {"postfix_showq_message_size_bytes_count", "postfix_smtpd_connects_total",
            "postfix_smtpd_messages_rejected_total", "postfix_smtp_delivery_delay_seconds_bucket",
            "postfleet_delivery_recipients_total"} <= seen


def test_postfix_exporter_names_are_exported() -> None:
    names = exported()
    assert {"postfix_showq_message_size_bytes_bucket", "postfix_showq_message_age_seconds_sum",
            "postfix_smtpd_connects_total", "postfix_smtpd_disconnects_total",
            "postfix_smtpd_messages_processed_total", "postfix_smtpd_messages_rejected_total",
            "postfix_qmgr_messages_inserted_size_bytes_bucket",
            "postfix_qmgr_messages_inserted_receipients_bucket",
            "postfix_qmgr_messages_removed_total", "postfix_smtp_delivery_delay_seconds_bucket",
            "postfix_lmtp_delivery_delay_seconds_bucket"} <= names
