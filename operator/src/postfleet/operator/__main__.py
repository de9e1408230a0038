"""python -m postfleet.operator: the operator role (--postconf: its parameters,
without importing kopf)."""

from postfleet.core.postconf import role_entry

role_entry("postfleet.operator.settings:OperatorSettings", "postfleet.operator.main:main")
