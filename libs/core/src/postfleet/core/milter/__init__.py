"""The milter protocol, MTA side (Sendmail 8 milter protocol version 2 to
6, as Postfix's milter8.c speaks it): settings, the wire format, and the
client that runs a message past a list of milters.

Postfix parameters: see settings.py.
"""
