"""The console: a read-only web application for operators and the supervisor, over
what the observer verifies of every ledger's journal."""
