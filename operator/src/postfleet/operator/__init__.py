"""postfleet's kopf operator: MailDomain/Transport resources -> the routing snapshot."""
