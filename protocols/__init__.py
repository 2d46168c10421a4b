"""What every Lockstep party speaks: messages, their canonical encoding, signatures,
the HTLC state machine and the bus interface. Nothing here does I/O except the bus
implementations under `protocols.bus`."""

PROTOCOL_VERSION = 1
