"""The commands a party runs against the services: submit, statement, status, rotate-key,
corporate-action."""
