"""evtwin.agents: EV/driver agents (mesa) and virtual OCPP charging stations."""

from .battery import ChargeResult, charge
from .behaviour import DEFAULTS, Behaviour, Vehicle, Visit, behaviour_for
from .ev import EV, VisitRecord
from .exceptions import AgentsError, ProfileRejected
from .model import ChargingModel, SiteConfig
from .station import Evse, Profile, VirtualStation

__all__ = [
    "DEFAULTS", "EV", "AgentsError", "Behaviour", "ChargeResult", "ChargingModel", "Evse",
    "Profile", "ProfileRejected", "SiteConfig", "Vehicle", "VirtualStation",
    "Visit", "VisitRecord", "behaviour_for", "charge",
]
