"""The benchmark runner: `lockstep bench`."""
