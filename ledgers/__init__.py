"""The ledger service: one engine configured as a securities depository (CSD), a CBDC
ledger (one or several currencies) or a unified ledger holding both."""
