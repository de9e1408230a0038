"""python -m postfleet.delivery: the delivery role (--postconf: its parameters)."""

from postfleet.core.postconf import role_entry

role_entry("postfleet.delivery.settings:DeliverySettings", "postfleet.delivery.main:main")
