"""Checking what ledgers did from outside: the audit, the effects each instruction must
have, the live observer and the conformance run."""
