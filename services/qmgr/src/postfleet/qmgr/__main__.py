"""python -m postfleet.qmgr: run the qmgr role; with --postconf, only print
its parameters (the settings class alone is imported, so `postfleet
postconf` does not pay for the role's start-up imports)."""

from postfleet.core.postconf import print_postconf, wants_postconf

if wants_postconf():
    from postfleet.qmgr.settings import QmgrSettings

    print_postconf(QmgrSettings)
else:
    from postfleet.qmgr.main import main

    main()
