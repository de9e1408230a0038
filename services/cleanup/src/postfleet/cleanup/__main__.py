"""python -m postfleet.cleanup: run the cleanup role; with --postconf, only print
its parameters (the settings class alone is imported, so `postfleet
postconf` does not pay for the role's start-up imports)."""

from postfleet.core.postconf import print_postconf, wants_postconf

if wants_postconf():
    from postfleet.cleanup.settings import CleanupSettings

    print_postconf(CleanupSettings)
else:
    from postfleet.cleanup.main import main

    main()
