"""delivery's Prometheus metrics (served on the role's /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECIPIENTS = Counter(
    "postfleet_delivery_recipients_total",
    "Recipient delivery attempts by transport and outcome (sent, deferred, bounced).",
    ["transport", "status"],
)
JOBS = Counter(
    "postfleet_delivery_jobs_total",
    "Delivery jobs handled, by transport and how they ended "
    "(done; gone: message already finished; unpublished: result not published, "
    "job left for redelivery; store_error: message unreadable, retried; "
    "bad: undecodable job).",
    ["transport", "result"],
)
JOBS_ACTIVE = Gauge("postfleet_delivery_jobs_active", "Jobs being delivered now.")
JOB_SECONDS = Histogram(
    "postfleet_delivery_job_seconds",
    "Time to deliver one job (message read to result published).",
    ["transport"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
CONNECTIONS = Gauge(
    "postfleet_delivery_smtp_connections",
    "Open SMTP client connections (busy and idle in the cache).",
)
CONNECTIONS_OPENED = Counter(
    "postfleet_delivery_smtp_connections_opened_total", "SMTP client connections opened."
)
CONNECTIONS_REUSED = Counter(
    "postfleet_delivery_smtp_connections_reused_total",
    "Deliveries that reused a cached SMTP connection.",
)

# Delivery delays, per recipient as the mail log's delay= (arrival to result);
# postfix_exporter's buckets.
TIME_BUCKETS = (1e-3, 1e-2, 1e-1, 1.0, 10, 60, 3600, 86400, 172800)
DELAY = Histogram(
    "postfleet_delivery_delay_seconds",
    "Arrival to delivery result per recipient (the log's delay=), by transport and status.",
    ["transport", "status"], buckets=TIME_BUCKETS)
# postfix_exporter's per-program delay histograms (from the log's delays=a/b/c/d).
# Stages here: queue_manager, arrival until the delivery began (Postfix's a+b),
# and transmission, connection set-up and transmission (c+d).
STAGE_DELAYS = {
    program: Histogram(f"postfix_{program}_delivery_delay_seconds",
                       f"{program.upper()} message processing time in seconds, by stage.",
                       ["stage"], buckets=TIME_BUCKETS)
    for program in ("smtp", "lmtp")
}
