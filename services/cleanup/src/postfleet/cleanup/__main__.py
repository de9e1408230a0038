"""python -m postfleet.cleanup: the cleanup role (--postconf: its parameters)."""

from postfleet.core.postconf import role_entry

role_entry("postfleet.cleanup.settings:CleanupSettings", "postfleet.cleanup.main:main")
