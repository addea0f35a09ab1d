"""evtwin.csms: the CSMS core, an OCPP server that also runs on its own.

Never imports evtwin.agents or evtwin.sim. The public names below are imported
on first use (module ``__getattr__``), so ``import evtwin.csms`` is cheap and
the strategies' numpy, scipy and grid-model imports are paid only by a CSMS
that runs those strategies (see :data:`evtwin.csms.strategies._LAZY`).
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: Where each public name lives (submodule of this package).
_SOURCES: dict[str, str] = {
    "Clock": "clock",
    "iso": "clock",
    "parse_iso": "clock",
    "wall_clock": "clock",
    "CSMSCore": "core",
    "ProfileCommand": "core",
    "ConfigError": "exceptions",
    "CSMSError": "exceptions",
    "StationNotConnectedError": "exceptions",
    "UnknownStationError": "exceptions",
    "UnknownStrategyError": "exceptions",
    "ControlView": "model",
    "CSMSConfig": "model",
    "EvseSpec": "model",
    "SessionView": "model",
    "SiteSpec": "model",
    "SiteView": "model",
    "StationSpec": "model",
    "Tariff": "model",
    "CSMS16": "ocpp16",
    "CSMS21": "ocpp201",
    "CSMS201": "ocpp201",
    "SecurityConfig": "security",
    "hash_password": "security",
    "verify_password": "security",
    "SUBPROTOCOLS": "server",
    "CountingConnection": "server",
    "CSMSServer": "server",
    "CallFailed": "shell",
    "ShellBase": "shell",
    "Store": "store",
    "get_strategy": "strategies",
    "register": "strategies",
    "strategy_names": "strategies",
}


def __getattr__(name: str) -> Any:
    """Import a public name's submodule on first use (PEP 562); submodules too."""
    module = _SOURCES.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value
    if name.startswith("__"):  # dunder probes (copy, pickle, doctest) are not submodules
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    """The module's names, the lazy public ones included."""
    return sorted(set(globals()) | set(__all__))
