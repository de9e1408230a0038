"""python -m postfleet.filter: run the filter role; with --postconf, only print
its parameters (the settings class alone is imported, so `postfleet
postconf` does not pay for the role's start-up imports)."""

from postfleet.core.postconf import print_postconf, wants_postconf

if wants_postconf():
    from postfleet.filter.settings import FilterSettings

    print_postconf(FilterSettings)
else:
    from postfleet.filter.main import main

    main()
