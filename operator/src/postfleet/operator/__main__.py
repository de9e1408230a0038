"""``python -m postfleet.operator``: the operator role; with --postconf, only
print its parameters (the settings class alone is imported, not kopf)."""

from postfleet.core.postconf import print_postconf, wants_postconf

if wants_postconf():
    from postfleet.operator.settings import OperatorSettings

    print_postconf(OperatorSettings)
else:
    from postfleet.operator.main import main

    main()
