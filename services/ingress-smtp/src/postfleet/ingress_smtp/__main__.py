"""python -m postfleet.ingress_smtp: run the ingress-smtp role; with --postconf, only print
its parameters (the settings class alone is imported, so `postfleet
postconf` does not pay for the role's start-up imports)."""

from postfleet.core.postconf import print_postconf, wants_postconf

if wants_postconf():
    from postfleet.ingress_smtp.settings import IngressSettings

    print_postconf(IngressSettings)
else:
    from postfleet.ingress_smtp.main import main

    main()
