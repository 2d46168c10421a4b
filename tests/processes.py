"""Lockstep services as real OS processes, for service and fault tests (the class lives
in engine.world.processes, since `lockstep chaos --bus mqtt` starts and kills them too)."""

from engine.world.processes import ServiceProcess

__all__ = ["ServiceProcess"]
