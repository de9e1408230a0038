"""python -m postfleet.filter: the filter role (--postconf: its parameters)."""

from postfleet.core.postconf import role_entry

role_entry("postfleet.filter.settings:FilterSettings", "postfleet.filter.main:main")
