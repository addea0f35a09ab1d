"""evtwin.transports: ways to carry OCPP-J frames between a station and a CSMS.

- websocket: the real thing, in :mod:`evtwin.csms.server` (the CSMS's endpoint)
  and the stations' ``websockets`` clients;
- :mod:`.memory`: the same frames, built, validated and routed exactly as over a
  websocket, through an in-process pipe (no sockets, no framing, no handshake).

Imports neither evtwin.csms nor evtwin.agents nor evtwin.sim: each side hands its
end of a pipe to its own OCPP shell.
"""

from .memory import MemoryClosed, MemoryConnection, memory_pair

__all__ = ["MemoryClosed", "MemoryConnection", "memory_pair"]
