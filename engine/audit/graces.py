"""How late is too late: how long past a lock's refund time (or a leg's deadline) the
audit and the observer let it stay held before they call it a violation. Apart from the
checks themselves, so that the command line shows them without loading the checks."""

AUDIT_GRACE_MS = 60_000  # the audit reads after the fact: a ledger that was down for a minute is not a violation
OBSERVER_GRACE_MS = 2_000  # live, on the observer's clock: a ledger's refund comes within a batch of its time
