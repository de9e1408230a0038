"""python -m postfleet.ingress_smtp: run the ingress-smtp role (Postfix smtpd)."""

from postfleet.ingress_smtp.main import main

main()
