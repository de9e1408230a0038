"""Mail authentication for every role: DKIM keys and signing, ARC sealing,
SPF, DKIM verification, DMARC evaluation and RFC 8601
Authentication-Results, on kept libraries (dkimpy, pyspf, dmarc, authres).

Postfix parameters: none (Postfix leaves all of it to milters and policy
servers); postfleet's own parameters are named where they are read.
"""
