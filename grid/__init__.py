"""evtwin.grid: the LV feeder model.

Loads pandapower networks, places EV stations on them and solves the power flow
every step with power-grid-model (fast) or pandapower (reference).
"""

from evtwin.grid.exceptions import (
    BusMappingError,
    GridError,
    NetworkFileError,
    PowerFlowError,
    UnknownNetworkError,
)
from evtwin.grid.feeder import Engine, Feeder, place_stations, supplied_buses
from evtwin.grid.networks import NETWORKS, load_network
from evtwin.grid.profiles import BaseLoadProfile, ProfileShape
from evtwin.grid.pv import PVProfile, clear_sky_pu, read_pv_csv
from evtwin.grid.results import GridLimits, GridResult

__all__ = [
    "NETWORKS",
    "BaseLoadProfile",
    "BusMappingError",
    "Engine",
    "Feeder",
    "GridError",
    "GridLimits",
    "GridResult",
    "NetworkFileError",
    "PVProfile",
    "PowerFlowError",
    "ProfileShape",
    "UnknownNetworkError",
    "clear_sky_pu",
    "load_network",
    "place_stations",
    "read_pv_csv",
    "supplied_buses",
]
