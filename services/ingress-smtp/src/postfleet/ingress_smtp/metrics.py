"""ingress-smtp Prometheus metrics (served on the role's /metrics).

Defined once at import; registering a metric connects to nothing.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Counter(
    "postfleet_smtpd_connections_total", "SMTP connections accepted", ["listener"]
)
SESSIONS = Gauge(
    "postfleet_smtpd_sessions", "SMTP sessions in progress", ["listener"]
)
ACCEPTED = Counter(
    "postfleet_smtpd_messages_accepted_total",
    "Messages answered 250 after cleanup committed them", ["listener"],
)
REJECTS = Counter(
    "postfleet_smtpd_rejects_total", "4xx/5xx replies sent, by reply code", ["listener", "code"]
)
SUBMIT_SECONDS = Histogram(
    "postfleet_smtpd_submit_seconds", "Time for cleanup's Submit (stream + commit)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
SUBMIT_FAILURES = Counter(
    "postfleet_smtpd_submit_failures_total", "Submits to cleanup that failed", ["reason"]
)
RESENDS = Counter(
    "postfleet_smtpd_submit_resends_total",
    "Submits sent again because cleanup's answer was lost (it died during the call)",
)

# postfix_exporter's names (its smtpd log-line counters), so a Postfix
# dashboard's queries find them.
POSTFIX_CONNECTS = Counter("postfix_smtpd_connects", "Incoming connections (connect from).")
POSTFIX_DISCONNECTS = Counter("postfix_smtpd_disconnects",
                              "Incoming disconnections (disconnect from).")
POSTFIX_PROCESSED = Counter(
    "postfix_smtpd_messages_processed", "Messages queued (client= lines), by SASL method.",
    ["sasl_method"])
POSTFIX_REJECTED = Counter(
    "postfix_smtpd_messages_rejected", "NOQUEUE rejects, by reply code.", ["code"])
