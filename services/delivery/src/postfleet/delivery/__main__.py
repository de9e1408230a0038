"""python -m postfleet.delivery: run the delivery role; with --postconf, only print
its parameters (the settings class alone is imported, so `postfleet
postconf` does not pay for the role's start-up imports)."""

from postfleet.core.postconf import print_postconf, wants_postconf

if wants_postconf():
    from postfleet.delivery.settings import DeliverySettings

    print_postconf(DeliverySettings)
else:
    from postfleet.delivery.main import main

    main()
