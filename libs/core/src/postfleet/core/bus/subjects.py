"""Bus subjects, stream and bucket names: the one place they are spelled.

Every NATS message may be lost or repeated without harm (DESIGN invariant 3):
the database is the truth and every handler is idempotent.
"""

from __future__ import annotations

PREFIX = "postfleet"

# Core NATS (no persistence): cleanup -> qmgr "new mail", like Postfix's
# cleanup poking qmgr through the public/qmgr FIFO.
QUEUE_INCOMING = f"{PREFIX}.queue.incoming"

# Core NATS, qmgr -> every qmgr: results were applied, destination slots
# are free again; replicas with jobs waiting for a slot look again. The
# body is the jobs' ids, one per line; the SENDER header names the qmgr
# that applied them (it refilled those slots itself and ignores its own).
SLOTS_FREED = f"{PREFIX}.qmgr.slots"
SENDER = "Postfleet-Sender"

# Core NATS request, smtpd -> any qmgr: flush the deferred mail of a site
# (ETRN; Postfix's flush service). The request is the site (a domain), the
# reply "ok" (its mail is due now) or "deny" (not in fast_flush_domains).
FLUSH_SITE = f"{PREFIX}.qmgr.flush"

# JetStream work queue of delivery jobs, one subject per transport.
DELIVERY_STREAM = "postfleet-delivery"
DELIVERY_SUBJECTS = f"{PREFIX}.delivery.>"

# JetStream stream of per-job results, consumed by any qmgr replica.
RESULTS_STREAM = "postfleet-results"
RESULTS_SUBJECT = f"{PREFIX}.results"
RESULTS_CONSUMER = "qmgr"

# NATS KV bucket holding the routing snapshot.
ROUTING_BUCKET = "postfleet-routing"
ROUTING_KEY = "snapshot"

# NATS KV bucket of smtpd's anvil counters, shared by every ingress replica.
ANVIL_BUCKET = "postfleet-anvil"


def delivery_subject(transport: str) -> str:
    return f"{PREFIX}.delivery.{transport}"


def delivery_consumer(transport: str) -> str:
    """The durable pull consumer every delivery replica of a transport shares."""
    return f"delivery-{transport}"
