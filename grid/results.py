"""Operating limits and power-flow results."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["GridLimits", "GridResult"]


@dataclass(frozen=True, slots=True)
class GridLimits:
    """Operating limits a power-flow result is checked against.

    Attributes:
        v_min_pu: lowest allowed bus voltage in p.u.
        v_max_pu: highest allowed bus voltage in p.u.
        line_loading_max_percent: highest allowed line current, % of its rating.
        trafo_loading_max_percent: highest allowed transformer loading, % of rated power.
    """

    # EN 50160: supply voltage within ±10 % of nominal (for 95 % of the 10-min means
    # over a week).  Applied here to every single power-flow step.
    v_min_pu: float = 0.90
    v_max_pu: float = 1.10
    line_loading_max_percent: float = 100.0
    trafo_loading_max_percent: float = 100.0
    # EN 50160: voltage unbalance (negative- over positive-sequence) up to 2 % on
    # 10-minute means; checked on every unbalanced power flow.
    vuf_max_percent: float = 2.0


@dataclass(frozen=True, slots=True, eq=False)
class GridResult:
    """Summary of one power flow.

    Attributes:
        vm_min_pu: lowest voltage over the supplied, in-service buses, in p.u.
        vm_max_pu: highest voltage over the same buses, in p.u.
        line_loading_max_percent: highest line loading, % of rated current (0 if no lines).
        trafo_loading_percent: highest transformer loading, % of rated apparent power
            (0 if no transformers).
        station_vm_pu: voltage at each EV station's bus, in station order, in p.u.
        bus_vm_pu: voltage at every bus in ``Feeder.bus_index`` order, in p.u.
        line_loadings_percent: loading of every line in ``net.line`` order, in %.
        trafo_loadings_percent: loading of every transformer in ``net.trafo`` order, in %.

    The arrays are read-only.
    """

    vm_min_pu: float
    vm_max_pu: float
    line_loading_max_percent: float
    trafo_loading_percent: float
    station_vm_pu: npt.NDArray[np.float64]
    bus_vm_pu: npt.NDArray[np.float64]
    line_loadings_percent: npt.NDArray[np.float64]
    trafo_loadings_percent: npt.NDArray[np.float64]
    bus_vm_phase_pu: npt.NDArray[np.float64] | None = None
    """Unbalanced power flow: every bus's L1, L2, L3 voltage, shape ``(n_bus, 3)``
    (``bus_vm_pu`` is then each bus's lowest phase)."""
    vuf_max_percent: float | None = None
    """Unbalanced: the highest voltage unbalance factor over the monitored buses, %."""
    neutral_current_max_a: float | None = None
    """Unbalanced: the highest return (neutral) current of a line, A."""

    def violations(self, limits: GridLimits | None = None) -> list[str]:
        """Names of the limits this result breaks, in a fixed order.

        Possible names: ``"undervoltage"``, ``"overvoltage"``, ``"line_overload"``,
        ``"trafo_overload"`` and (unbalanced power flow) ``"unbalance"``.  An empty
        list means every limit holds.
        ``limits`` defaults to :class:`GridLimits()`.
        """
        lim = _DEFAULT_LIMITS if limits is None else limits
        broken: list[str] = []
        if self.vm_min_pu < lim.v_min_pu:
            broken.append("undervoltage")
        if self.vm_max_pu > lim.v_max_pu:
            broken.append("overvoltage")
        if self.line_loading_max_percent > lim.line_loading_max_percent:
            broken.append("line_overload")
        if self.trafo_loading_percent > lim.trafo_loading_max_percent:
            broken.append("trafo_overload")
        if self.vuf_max_percent is not None and self.vuf_max_percent > lim.vuf_max_percent:
            broken.append("unbalance")
        return broken


_DEFAULT_LIMITS = GridLimits()
