"""The coordinator: a pure core (core.py) that drives every settlement through its
phases, the shell around it that does the I/O (shell.py), and its journal (journal.py)."""

from .shell import IN_FLIGHT_MAX, INTAKE_MAX, Coordinator, Desk

__all__ = ["INTAKE_MAX", "IN_FLIGHT_MAX", "Coordinator", "Desk"]
