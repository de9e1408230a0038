"""The roles, by name, and the module each runs (``python -m MODULE``).

The CLI and the test fixtures start roles as processes and never import
their internals: roles meet only through proto/, the bus and the database.
"""

from __future__ import annotations

ROLE_MODULES: dict[str, str] = {
    "cleanup": "postfleet.cleanup",
    "qmgr": "postfleet.qmgr",
    "delivery": "postfleet.delivery",
    "ingress-smtp": "postfleet.ingress_smtp",
    "filter": "postfleet.filter",
    "operator": "postfleet.operator",
}

# What `postfleet run all` supervises, in start order (the operator belongs
# to Kubernetes; the monolith loads routes from the config file instead).
MONOLITH_ROLES = ("cleanup", "qmgr", "delivery", "filter", "ingress-smtp")
