"""evtwin.csms: the CSMS core, an OCPP server that also runs on its own.

Never imports evtwin.agents or evtwin.sim.
"""

from .clock import Clock, iso, parse_iso, wall_clock
from .core import CSMSCore, ProfileCommand
from .exceptions import (
    ConfigError,
    CSMSError,
    StationNotConnectedError,
    UnknownStationError,
    UnknownStrategyError,
)
from .model import ControlView, CSMSConfig, EvseSpec, SessionView, SiteSpec, SiteView, StationSpec
from .server import CSMSServer
from .store import Store
from .strategies import get_strategy, register, strategy_names

__all__ = [
    "CSMSConfig", "CSMSCore", "CSMSError", "CSMSServer", "Clock", "ConfigError", "ControlView",
    "EvseSpec", "ProfileCommand", "SessionView", "SiteSpec", "SiteView", "StationNotConnectedError",
    "StationSpec", "Store", "UnknownStationError", "UnknownStrategyError", "get_strategy", "iso",
    "parse_iso", "register", "strategy_names", "wall_clock",
]
