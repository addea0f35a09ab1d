"""evtwin.grid: the LV feeder model.

Loads pandapower networks, places EV stations on them and solves the power flow
every step with power-grid-model (fast) or pandapower (reference).

The exceptions are imported eagerly; everything else (pandapower,
power-grid-model, pandas) on first use, through module ``__getattr__``, so that
catching a :class:`GridError` costs nothing.
"""

import importlib
from typing import TYPE_CHECKING, Any

from evtwin.grid.exceptions import (
    BusMappingError,
    GridError,
    NetworkExtraError,
    NetworkFileError,
    PowerFlowError,
    UnknownNetworkError,
    UnknownSimbenchCodeError,
)

if TYPE_CHECKING:
    from evtwin.grid.feeder import (
        Engine,
        Feeder,
        distance_from_source_km,
        load_buses,
        place_stations,
        supplied_buses,
    )
    from evtwin.grid.hosting import HostingCapacity, hosting_capacity, limits_broken, load_cases
    from evtwin.grid.networks import NETWORKS, SIMBENCH_PREFIX, is_simbench, load_network
    from evtwin.grid.profiles import (
        BaseLoad,
        BaseLoadKind,
        BaseLoadProfile,
        LoadTimeSeries,
        ProfileShape,
        base_load,
    )
    from evtwin.grid.pv import PVProfile, clear_sky_pu, csv_times, read_pv_csv
    from evtwin.grid.results import GridLimits, GridResult

__all__ = [
    "NETWORKS",
    "SIMBENCH_PREFIX",
    "BaseLoad",
    "BaseLoadKind",
    "BaseLoadProfile",
    "BusMappingError",
    "Engine",
    "Feeder",
    "GridError",
    "GridLimits",
    "GridResult",
    "HostingCapacity",
    "LoadTimeSeries",
    "NetworkExtraError",
    "NetworkFileError",
    "PVProfile",
    "PowerFlowError",
    "ProfileShape",
    "UnknownNetworkError",
    "UnknownSimbenchCodeError",
    "base_load",
    "clear_sky_pu",
    "csv_times",
    "distance_from_source_km",
    "hosting_capacity",
    "is_simbench",
    "limits_broken",
    "load_buses",
    "load_cases",
    "load_network",
    "place_stations",
    "read_pv_csv",
    "supplied_buses",
]

#: Where each lazily imported public name lives (submodule of this package).
_SOURCES: dict[str, str] = {
    "Engine": "feeder", "Feeder": "feeder", "place_stations": "feeder",
    "supplied_buses": "feeder", "load_buses": "feeder", "distance_from_source_km": "feeder",
    "HostingCapacity": "hosting", "hosting_capacity": "hosting", "load_cases": "hosting",
    "limits_broken": "hosting",
    "NETWORKS": "networks", "load_network": "networks", "SIMBENCH_PREFIX": "networks",
    "is_simbench": "networks",
    "BaseLoadProfile": "profiles", "ProfileShape": "profiles", "LoadTimeSeries": "profiles",
    "BaseLoad": "profiles", "BaseLoadKind": "profiles", "base_load": "profiles",
    "PVProfile": "pv", "clear_sky_pu": "pv", "csv_times": "pv", "read_pv_csv": "pv",
    "GridLimits": "results", "GridResult": "results",
}


def __getattr__(name: str) -> Any:
    """Import a public name's submodule on first use (PEP 562)."""
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names, the lazy public ones included."""
    return sorted(set(globals()) | set(__all__))
