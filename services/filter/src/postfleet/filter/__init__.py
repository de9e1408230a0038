"""The filter role: Postfix's content_filter as a built-in after-queue filter.

qmgr sends a message whose content filter is ``filter:`` (the transport the
role serves) over the bus like a delivery job; the role scans it (header and
body checks, clamd, spamd) and hands the result back to cleanup with the
filter turned off, under a new queue id, as an amavis-style filter does.
"""
