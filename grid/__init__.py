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
from evtwin.grid.feeder import Engine, Feeder
from evtwin.grid.networks import NETWORKS, load_network
from evtwin.grid.profiles import BaseLoadProfile, ProfileShape
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
    "PowerFlowError",
    "ProfileShape",
    "UnknownNetworkError",
    "load_network",
]
