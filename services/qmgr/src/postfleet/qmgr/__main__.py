"""python -m postfleet.qmgr: the qmgr role (--postconf: its parameters)."""

from postfleet.core.postconf import role_entry

role_entry("postfleet.qmgr.settings:QmgrSettings", "postfleet.qmgr.main:main")
