"""Postfix's header and body checks (header_checks(5)), shared by cleanup
(before the queue) and the filter role (after it): pattern tables
(``tables``) and the walk over a message that applies them (``message``).

Postfix parameters: see ``message``.
"""
