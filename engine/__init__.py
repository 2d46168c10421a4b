"""The coordinator side of Lockstep, and the command line that starts every service."""
