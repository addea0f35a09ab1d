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
from .model import (
    ControlView,
    CSMSConfig,
    EvseSpec,
    SessionView,
    SiteSpec,
    SiteView,
    StationSpec,
    Tariff,
)
from .ocpp16 import CSMS16
from .ocpp201 import CSMS21, CSMS201
from .security import SecurityConfig, hash_password, verify_password
from .server import SUBPROTOCOLS, CountingConnection, CSMSServer
from .shell import CallFailed, ShellBase
from .store import Store
from .strategies import get_strategy, register, strategy_names

__all__ = [
    "CSMS16",
    "CSMS21",
    "CSMS201",
    "SUBPROTOCOLS",
    "CSMSConfig",
    "CSMSCore",
    "CSMSError",
    "CSMSServer",
    "CallFailed",
    "Clock",
    "ConfigError",
    "ControlView",
    "CountingConnection",
    "EvseSpec",
    "ProfileCommand",
    "SecurityConfig",
    "SessionView",
    "ShellBase",
    "SiteSpec",
    "SiteView",
    "StationNotConnectedError",
    "StationSpec",
    "Store",
    "Tariff",
    "UnknownStationError",
    "UnknownStrategyError",
    "get_strategy",
    "hash_password",
    "iso",
    "parse_iso",
    "register",
    "strategy_names",
    "verify_password",
    "wall_clock",
]
from . import feeder as _feeder  # noqa: F401  (registers feeder_aware)
from . import scheduling as _scheduling  # noqa: F401  (registers edf, llf, price, pv_self_consumption)
from . import v2g as _v2g  # noqa: F401  (registers the V2G strategies)
