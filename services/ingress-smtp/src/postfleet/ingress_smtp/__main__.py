"""python -m postfleet.ingress_smtp: the ingress-smtp role (--postconf: its parameters)."""

from postfleet.core.postconf import role_entry

role_entry("postfleet.ingress_smtp.settings:IngressSettings", "postfleet.ingress_smtp.main:main")
