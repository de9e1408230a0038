"""``python -m postfleet.operator``: the operator role."""

from postfleet.operator.main import main

main()
