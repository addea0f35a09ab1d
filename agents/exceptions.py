"""Exceptions of the agents package."""

from __future__ import annotations


class AgentsError(Exception):
    """Base class of every error evtwin.agents raises on purpose."""


class ProfileRejected(AgentsError):
    """A charging profile the station cannot accept; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProtocolError(AgentsError):
    """The OCPP exchange cannot go on: a CSMS refused a boot or transaction message,
    answered wrongly, did not answer in time, or the connection closed."""
