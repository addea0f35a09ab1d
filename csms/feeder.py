"""The CSMS's model of its feeder and the ``feeder_aware`` strategy.

The CSMS builds a :class:`FeederModel` once from the network model (a pandapower
net with the stations placed on buses).  The model holds linear sensitivities of
the feeder at an operating point, measured by perturbation with a
power-grid-model batch calculation (one scenario per station, ~10 ms on a
116-bus feeder):

* ``dV/dP``: p.u. per kW of every bus voltage w.r.t. each station's EV power;
* ``dLoading/dP``: % per kW of every line and transformer loading.

Each time a measurement arrives (:meth:`FeederModel.observe`), the model
compares it with what it predicted from the previous measurement
(``V_prev + dV/dP · ΔP_ev``).  When the largest voltage error exceeds
``relinearise_threshold_pu`` (0.003 pu; linear sensitivities stay within about
0.002 pu on LV feeders for moderate EV additions), it re-linearises around the
new operating point and counts it.

Where the measurement comes from: the stations report the voltage at their own
bus (MeterValues); bus voltages elsewhere and the line and transformer loadings
are what a DSO's feeder monitoring (substation meter, smart-meter voltages)
would provide.  In the twin the runner hands over the last power flow's
:class:`~evtwin.grid.GridResult` as that "DSO monitoring" measurement, i.e. a
perfect, one-step-old measurement of every bus.  Without it (``bus_vm_pu`` is
None) the strategy constrains only the station buses, from the voltages and
powers the stations report.

The CSMS does not know each household's load.  To pick an operating point it
scales the nominal household loads by one factor that best matches the measured
bus voltages (a one-parameter state estimate); the sensitivities depend only
weakly on it, and the re-linearisation check catches the rest.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

# The exceptions and result types only: ``evtwin.grid.feeder`` imports pandapower
# and power-grid-model, which a CSMS needs only once it builds a FeederModel.
from evtwin.grid.exceptions import PowerFlowError
from evtwin.grid.results import GridLimits, GridResult

if TYPE_CHECKING:
    from evtwin.grid.feeder import Feeder

from .exceptions import ConfigError
from .model import ControlView, Session, SessionView
from .strategies import Limits, equal_share, register, usable_cap_kw

__all__ = ["FEEDER_STRATEGIES", "FeederModel", "FeederMonitor", "FeederView", "build_feeder_model",
           "feeder_aware", "needs_feeder"]

log = logging.getLogger("evtwin.csms.feeder")

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

#: Strategies that read ``ControlView.feeder``; a runner builds a FeederModel for them.
FEEDER_STRATEGIES: set[str] = {"feeder_aware", "v2g_peak_shaving"}

# Household scale factors tried when estimating the operating point (1.0 = nominal).
_SCALE_GRID = np.linspace(0.0, 1.5, 31)


def needs_feeder(strategy: str) -> bool:
    """True if ``strategy`` uses a feeder model (so the CSMS should be given one)."""
    return strategy in FEEDER_STRATEGIES


@dataclass(frozen=True, slots=True, eq=False)
class FeederView:
    """What a strategy sees of the feeder: sensitivities, last measurement, limits.

    Arrays are read-only.  Bus rows follow the network's bus order; columns
    follow ``station_ids``.

    Attributes:
        station_ids: the stations the model knows, in column order.
        station_bus_rows: bus row of each station.
        monitored_bus_rows: bus rows whose voltage limits apply (supplied, in service).
        dv_dp_pu_per_kw: ``(n_bus, n_station)`` bus voltage change per kW of EV power.
        dline_dp_percent_per_kw: ``(n_line, n_station)`` line loading change per kW.
        dtrafo_dp_percent_per_kw: ``(n_trafo, n_station)`` transformer loading change per kW.
        bus_vm_pu: measured voltage of every bus, p.u. (None: only station reports known).
        line_loading_percent: measured loading of every line, % (None if unknown).
        trafo_loading_percent: measured loading of every transformer, % (None if unknown).
        station_p_kw: EV power of each station when it was measured, kW.
        limits: the feeder's operating limits.
        v_margin_pu: kept between predicted voltages and the voltage limits, p.u.
        loading_margin_percent: kept below the thermal limits, percentage points.
        nominal_voltage_v: what 1 p.u. is in the stations' voltage reports, V.
        measured_at: when the measurement was taken (None if unknown).
    """

    station_ids: tuple[str, ...]
    station_bus_rows: IntArray
    monitored_bus_rows: IntArray
    dv_dp_pu_per_kw: FloatArray
    dline_dp_percent_per_kw: FloatArray
    dtrafo_dp_percent_per_kw: FloatArray
    bus_vm_pu: FloatArray | None
    line_loading_percent: FloatArray | None
    trafo_loading_percent: FloatArray | None
    station_p_kw: FloatArray
    limits: GridLimits = GridLimits()  # noqa: RUF009  (frozen, so sharing is safe)
    v_margin_pu: float = 0.005
    loading_margin_percent: float = 2.0
    nominal_voltage_v: float = 230.0
    measured_at: datetime | None = None


def _readonly(a: npt.ArrayLike) -> FloatArray:
    out = np.array(a, dtype=np.float64)
    out.flags.writeable = False
    return out


class FeederModel:
    """Linear sensitivity model of a feeder, re-linearised when reality drifts.

    Args:
        feeder: the network model with the stations placed; the model solves its
            power flows (batch) on it, so give it a feeder of its own
            (:meth:`from_feeder` makes one).
        station_ids: the CSMS's station id of each of the feeder's stations.
        perturbation_kw: EV power added per station to measure the sensitivities
            (a secant over a typical charger's power, not a tangent).
        relinearise_threshold_pu: largest voltage prediction error tolerated before
            re-linearising, p.u.
        v_margin_pu, loading_margin_percent: safety margins handed to strategies.

    Attributes:
        linearisations: sensitivity computations so far (the first included).
        relinearisations: those triggered by a prediction error over the threshold.
        last_error_pu: largest voltage prediction error of the last observation.
        max_error_pu: largest voltage prediction error seen so far.
        household_scale: household load factor of the current operating point.

    Raises:
        ValueError: ``station_ids`` does not match the feeder's stations.
    """

    def __init__(
        self,
        feeder: Feeder,
        station_ids: Sequence[str],
        *,
        perturbation_kw: float = 5.0,
        relinearise_threshold_pu: float = 0.003,
        v_margin_pu: float = 0.005,
        loading_margin_percent: float = 2.0,
    ) -> None:
        if len(station_ids) != feeder.n_stations:
            raise ValueError(
                f"{len(station_ids)} station ids for a feeder with {feeder.n_stations} stations"
            )
        if perturbation_kw <= 0:
            raise ValueError(f"perturbation_kw must be > 0, got {perturbation_kw}")
        self.feeder = feeder
        self.station_ids = tuple(station_ids)
        self.perturbation_kw = perturbation_kw
        self.relinearise_threshold_pu = relinearise_threshold_pu
        self.v_margin_pu = v_margin_pu
        self.loading_margin_percent = loading_margin_percent
        self.linearisations = 0
        self.relinearisations = 0
        self.last_error_pu = 0.0
        self.max_error_pu = 0.0
        self.household_scale = 1.0
        self._monitored = feeder.monitored_bus_rows
        row_of = {int(b): r for r, b in enumerate(feeder.bus_index)}
        self._station_rows = np.array([row_of[b] for b in feeder.station_buses], dtype=np.intp)
        self._hh_p_mw = feeder.household_nominal_p_kw / 1e3
        self._hh_q_mvar = feeder.household_nominal_q_kvar / 1e3
        self._dv: FloatArray | None = None
        self._dline: FloatArray | None = None
        self._dtrafo: FloatArray | None = None
        self._last_vm: FloatArray | None = None
        self._last_ev: FloatArray | None = None

    @classmethod
    def from_feeder(
        cls, feeder: Feeder, station_ids: Sequence[str], **kwargs: float
    ) -> FeederModel:
        """A model on its own copy of ``feeder``'s network (power-grid-model engine),
        so computing sensitivities never touches the feeder being simulated."""
        from evtwin.grid.feeder import Feeder

        net = copy.deepcopy(feeder.net)
        # Drop the station loads the feeder added; the new Feeder adds its own.
        n_hh = feeder.n_households
        net.load = net.load.iloc[:n_hh]
        unbalanced = {}
        if feeder.unbalanced:
            # Per phase: households and single-phase stations on the same phases, so the
            # sensitivities are those of each bus's lowest phase.
            unbalanced = {"unbalanced": True, "phase_seed": feeder.phase_seed,
                          "station_connections": [
                              int(c) for c in feeder.load_phases[n_hh:n_hh + feeder.n_stations]]}
        own = Feeder(net, n_stations=feeder.n_stations, station_buses=feeder.station_buses,
                     engine="pgm", limits=feeder.limits, **unbalanced)
        return cls(own, station_ids, **kwargs)

    # ---------------------------------------------------------------- linearisation
    def sensitivities(
        self, household_p_mw: FloatArray, household_q_mvar: FloatArray, ev_p_kw: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """dV/dP (p.u./kW), dLine/dP and dTrafo/dP (%/kW) at this operating point.

        One batch power flow: the operating point, then one scenario per station with
        ``perturbation_kw`` added at that station.

        Raises:
            PowerFlowError: a scenario did not converge.
        """
        n = self.feeder.n_stations
        ev = np.vstack([ev_p_kw, ev_p_kw + self.perturbation_kw * np.eye(n)])
        bus, line, trafo = self.feeder.solve_batch(
            np.tile(household_p_mw, (n + 1, 1)), np.tile(household_q_mvar, (n + 1, 1)), ev
        )
        d = self.perturbation_kw
        return (
            ((bus[1:] - bus[0]) / d).T,
            ((line[1:] - line[0]) / d).T,
            ((trafo[1:] - trafo[0]) / d).T,
        )

    def _estimate_scale(self, bus_vm_pu: FloatArray, ev_p_kw: FloatArray,
                        rows: IntArray | None = None) -> float:
        """Household factor whose power flow best matches the measured voltages
        (of ``rows``; default every monitored bus)."""
        k = len(_SCALE_GRID)
        bus, _, _ = self.feeder.solve_batch(
            np.outer(_SCALE_GRID, self._hh_p_mw), np.outer(_SCALE_GRID, self._hh_q_mvar),
            np.tile(ev_p_kw, (k, 1)),
        )
        rows = self._monitored if rows is None else rows
        err = np.sqrt(np.mean((bus[:, rows] - bus_vm_pu[rows]) ** 2, axis=1))
        return float(_SCALE_GRID[int(np.argmin(err))])

    def estimate(self, ev_p_kw: npt.ArrayLike, station_vm_pu: npt.ArrayLike) -> GridResult:
        """The feeder's state as far as the stations' own reports tell it.

        ``station_vm_pu``: the voltage each station last reported, p.u. (NaN: none).
        The household load factor whose power flow best matches the reported
        voltages is taken (nominal if no station reported one), and the power
        flow at it with these EV powers is the estimate: every bus voltage and
        every line and transformer loading, as a DSO's state estimation from a
        few meters would give them.

        Raises:
            PowerFlowError: the power flow did not converge.
        """
        ev = np.asarray(ev_p_kw, dtype=np.float64)
        vm = np.asarray(station_vm_pu, dtype=np.float64)
        known = np.isfinite(vm)
        scale = self.household_scale
        if known.any():
            full = np.full(len(self.feeder.bus_index), np.nan)
            rows = self._station_rows[known]
            full[rows] = vm[known]
            # Several stations on one bus: the row keeps one of their reports.
            scale = self._estimate_scale(full, ev, np.unique(rows))
        bus, line, trafo = self.feeder.solve_batch(
            (self._hh_p_mw * scale)[None, :], (self._hh_q_mvar * scale)[None, :], ev[None, :])
        vm_bus, line_pct, trafo_pct = bus[0], line[0], trafo[0]
        monitored = vm_bus[self._monitored]
        return GridResult(
            vm_min_pu=float(monitored.min()), vm_max_pu=float(monitored.max()),
            line_loading_max_percent=float(line_pct.max()) if line_pct.size else 0.0,
            trafo_loading_percent=float(trafo_pct.max()) if trafo_pct.size else 0.0,
            station_vm_pu=_readonly(vm_bus[self._station_rows]), bus_vm_pu=_readonly(vm_bus),
            line_loadings_percent=_readonly(line_pct), trafo_loadings_percent=_readonly(trafo_pct))

    def linearise(self, ev_p_kw: npt.ArrayLike, bus_vm_pu: npt.ArrayLike | None = None) -> None:
        """Compute the sensitivities around these EV powers (kW per station); the
        household loads are estimated from ``bus_vm_pu`` when given.

        Raises:
            PowerFlowError: the model's power flow did not converge.
        """
        ev = np.asarray(ev_p_kw, dtype=np.float64)
        if bus_vm_pu is not None:
            self.household_scale = self._estimate_scale(np.asarray(bus_vm_pu, np.float64), ev)
        s = self.household_scale
        self._dv, self._dline, self._dtrafo = self.sensitivities(
            self._hh_p_mw * s, self._hh_q_mvar * s, ev
        )
        self.linearisations += 1

    def predict_vm_pu(self, ev_p_kw: npt.ArrayLike) -> FloatArray:
        """Bus voltages the model expects at these EV powers, from the last measurement.

        Raises:
            RuntimeError: nothing observed yet.
        """
        if self._dv is None or self._last_vm is None or self._last_ev is None:
            raise RuntimeError("FeederModel has no measurement yet; call observe() first")
        return self._last_vm + self._dv @ (np.asarray(ev_p_kw, np.float64) - self._last_ev)

    # ---------------------------------------------------------------- measurements
    def observe(
        self, result: GridResult, ev_p_kw: npt.ArrayLike, at: datetime | None = None
    ) -> FeederView:
        """Take a measurement (a power-flow result and the EV power of each station at
        that moment), re-linearise if the prediction missed it, return the view.

        Raises:
            PowerFlowError: the very first linearisation failed (later failures keep
                the previous sensitivities and are logged).
        """
        ev = np.array(ev_p_kw, dtype=np.float64)
        vm = np.asarray(result.bus_vm_pu, dtype=np.float64)
        if self._dv is None:
            self.linearise(ev, vm)
        elif self._last_vm is not None:
            predicted = self.predict_vm_pu(ev)
            rows = self._monitored
            self.last_error_pu = float(np.max(np.abs(predicted[rows] - vm[rows])))
            self.max_error_pu = max(self.max_error_pu, self.last_error_pu)
            if self.last_error_pu > self.relinearise_threshold_pu:
                try:
                    self.linearise(ev, vm)
                    self.relinearisations += 1
                except PowerFlowError as exc:
                    log.warning("feeder model: re-linearisation failed, keeping the old "
                                "sensitivities: %s", exc)
        self._last_vm, self._last_ev = vm.copy(), ev
        assert self._dv is not None and self._dline is not None and self._dtrafo is not None
        return FeederView(
            station_ids=self.station_ids,
            station_bus_rows=self._station_rows,
            monitored_bus_rows=self._monitored,
            dv_dp_pu_per_kw=_readonly(self._dv),
            dline_dp_percent_per_kw=_readonly(self._dline),
            dtrafo_dp_percent_per_kw=_readonly(self._dtrafo),
            bus_vm_pu=_readonly(vm),
            line_loading_percent=_readonly(result.line_loadings_percent),
            trafo_loading_percent=_readonly(result.trafo_loadings_percent),
            station_p_kw=_readonly(ev),
            limits=self.feeder.limits,
            v_margin_pu=self.v_margin_pu,
            loading_margin_percent=self.loading_margin_percent,
            measured_at=at,
        )


class FeederMonitor:
    """Keeps ``feeder_aware``'s view of the feeder current where no simulator hands
    it a power flow (``evtwin csms serve``): each control cycle it takes the EV
    power and the voltage the stations last reported (their open sessions),
    estimates the feeder's state from them (:meth:`FeederModel.estimate`) and
    observes that (:meth:`FeederModel.observe`)."""

    def __init__(self, model: FeederModel, nominal_voltage_v: float = 230.0) -> None:
        self.model = model
        self.nominal_voltage_v = nominal_voltage_v
        self._col = {sid: j for j, sid in enumerate(model.station_ids)}

    def update(self, sessions: Iterable[Session], at: datetime | None = None) -> FeederView:
        """The view after this cycle's reports (PowerFlowError if the model fails)."""
        n = len(self._col)
        p_kw = np.zeros(n)
        vm = np.full(n, np.nan)
        for s in sessions:
            j = self._col.get(s.station_id)
            if j is None or not s.is_open:
                continue
            p_kw[j] += s.power_w / 1000.0
            if s.voltage_v is not None and s.voltage_v > 0:
                v = s.voltage_v / self.nominal_voltage_v
                vm[j] = v if np.isnan(vm[j]) else min(vm[j], v)
        view = self.model.observe(self.model.estimate(p_kw, vm), p_kw, at)
        return replace(view, nominal_voltage_v=self.nominal_voltage_v)


def build_feeder_model(network: str, station_buses: Sequence[tuple[str, int]],
                       limits: GridLimits) -> FeederModel:
    """A model of ``network`` (a known name or a pandapower JSON file) with each
    station on its bus. Raises ConfigError naming ``feeder.network`` or the
    ``stations.N.bus`` that is not in the network."""
    from evtwin.grid import Feeder, GridError, load_network

    try:
        net = load_network(network)
    except GridError as exc:
        raise ConfigError("feeder.network", str(exc)) from None
    known = {int(b) for b in net.bus.index}
    for i, (_, bus) in enumerate(station_buses):
        if bus not in known:
            raise ConfigError(f"stations.{i}.bus", f"no bus {bus} in {network}")
    try:
        feeder = Feeder(net, n_stations=len(station_buses),
                        station_buses=[b for _, b in station_buses], engine="pgm",
                        limits=limits)
    except GridError as exc:
        raise ConfigError("feeder.network", str(exc)) from None
    return FeederModel(feeder, [sid for sid, _ in station_buses])


# ------------------------------------------------------------------------ strategy
#: How much an urgent session is preferred: weight = 1 + URGENCY_WEIGHT * urgency,
#: urgency = share of the time left it needs at full power (clipped to [0, 1]).
URGENCY_WEIGHT = 0.5
#: Weight of a session whose energy need the CSMS counts as met.  Not 0: the CSMS
#: meters grid-side energy while the EV asks for battery-side energy (about 8 %
#: charging losses), and an assumed need (site default) may be wrong; so such a
#: session still charges with whatever capacity nobody else can use, and the EV
#: stops by itself when full.
_DONE_WEIGHT = 0.05
#: Penalty per unit of constraint violation (0.01 pu, or 1 % loading) in the LP's
#: elastic rows: so high that a session charges into an already-violated limit only
#: if its effect on it is negligible (below ~1e-5 pu per kW).
_VIOLATION_PENALTY = 1e3
_V_UNIT_PU = 0.01


def _cap_and_weight(s: SessionView, now: datetime) -> tuple[float, float]:
    """Upper bound (kW) and objective weight of one session."""
    cap = usable_cap_kw(s)  # EVSE/EV maximum, less for an EV that takes less
    remaining = s.energy_remaining_kwh
    if remaining is not None and remaining <= 0.0:
        # Only an EV that said what it needs is known to be done. An assumed
        # need (the site default) may be a guess too low: that session keeps an
        # ordinary weight (no urgency), or a cut would starve it for good.
        return (cap, _DONE_WEIGHT) if s.needs_stated else (cap, 1.0)
    urgency = 0.0
    if remaining is not None and s.departure is not None and cap > 0:
        hours_left = max((s.departure - now).total_seconds() / 3600.0, 1e-3)
        urgency = min(remaining / (cap * hours_left), 1.0)
    return cap, 1.0 + URGENCY_WEIGHT * urgency


@register("feeder_aware")
def feeder_aware(view: ControlView) -> Limits:
    """Maximise the energy delivered while every bus voltage, line and transformer is
    predicted to stay inside its limits (minus margins).

    A linear program (HiGHS): maximise ``Σ w_i p_i`` over sessions, urgent sessions
    weighing more, subject to predicted ``V >= v_min + margin`` (and ``<= v_max -
    margin``) at every monitored bus, predicted loading ``<= max - margin`` for every
    line and transformer, each site's limit, and ``0 <= p_i <= cap_i`` (EVSE maximum,
    or the EV's maximum when stated).  Sessions whose need the CSMS counts as met get
    a small weight instead of a cap of 0 (see ``_DONE_WEIGHT``).  Predictions
    are the last measurement plus the sensitivities times the change of each
    station's EV power.  A limit already broken with no EV charging makes every
    session that worsens it get 0 (elastic rows with a high penalty), never an error.
    Sessions at stations the model does not know are bound only by site limits.
    Without a :class:`FeederView` it behaves like ``equal_share``.
    """
    fv = view.feeder
    if not isinstance(fv, FeederView):
        return equal_share(view)
    sessions = [s for site in view.sites for s in site.sessions]
    if not sessions:
        return {}
    n = len(sessions)
    caps, weights = np.zeros(n), np.zeros(n)
    for i, s in enumerate(sessions):
        caps[i], weights[i] = _cap_and_weight(s, view.now)

    # Session -> station column (M: n_station x n_session incidence).
    col = {sid: j for j, sid in enumerate(fv.station_ids)}
    m = np.zeros((len(fv.station_ids), n))
    for i, s in enumerate(sessions):
        if s.station_id in col:
            m[col[s.station_id], i] = 1.0

    rows_a: list[FloatArray] = []  # A p <= b, in scaled units
    rows_b: list[FloatArray] = []
    v_min = fv.limits.v_min_pu + fv.v_margin_pu
    v_max = fv.limits.v_max_pu - fv.v_margin_pu
    if fv.bus_vm_pu is not None:
        bus_rows = fv.monitored_bus_rows
        vm, p_meas = fv.bus_vm_pu[bus_rows], fv.station_p_kw
    else:
        # Partial knowledge: only the station buses, from what the stations report.
        bus_rows, vm, p_meas = _reported(fv, sessions, col)
    sv = fv.dv_dp_pu_per_kw[bus_rows] @ m  # p.u. per kW of each session
    v0 = vm - fv.dv_dp_pu_per_kw[bus_rows] @ p_meas  # predicted with no EV charging
    rows_a += [-sv / _V_UNIT_PU]
    rows_b += [(v0 - v_min) / _V_UNIT_PU]
    over_ok = v0 <= v_max  # an overvoltage without EVs is not ours to fix by charging
    rows_a += [sv[over_ok] / _V_UNIT_PU]
    rows_b += [(v_max - v0[over_ok]) / _V_UNIT_PU]
    for meas, sens, limit in (
        (fv.line_loading_percent, fv.dline_dp_percent_per_kw, fv.limits.line_loading_max_percent),
        (fv.trafo_loading_percent, fv.dtrafo_dp_percent_per_kw,
         fv.limits.trafo_loading_max_percent),
    ):
        if meas is None or not len(meas):
            continue
        rows_a += [sens @ m]
        rows_b += [limit - fv.loading_margin_percent - (meas - sens @ p_meas)]
    a_grid = np.vstack(rows_a)
    b_grid = np.concatenate(rows_b)
    # Rows that even every session at its cap cannot break are left out.
    worst = np.clip(a_grid, 0.0, None) @ caps
    keep = worst > b_grid
    a_grid, b_grid = a_grid[keep], b_grid[keep]

    a_site: list[FloatArray] = []
    b_site: list[float] = []
    start = 0
    for site in view.sites:
        k = len(site.sessions)
        if site.limit_kw is not None and k:
            row = np.zeros(n)
            row[start:start + k] = 1.0
            a_site.append(row)
            b_site.append(site.limit_kw)
        start += k

    # Variables: p (n sessions), then one slack per grid row (elastic constraints).
    r = len(b_grid)
    c = np.concatenate([-weights, np.full(r, _VIOLATION_PENALTY)])
    a_ub = np.hstack([a_grid, -np.eye(r)])
    b_ub = b_grid
    if a_site:
        a_ub = np.vstack([a_ub, np.hstack([np.vstack(a_site), np.zeros((len(a_site), r))])])
        b_ub = np.concatenate([b_ub, b_site])
    bounds = [(0.0, float(cap)) for cap in caps] + [(0.0, None)] * r
    from scipy.optimize import linprog  # here: scipy.optimize costs ~0.5 s to import

    res = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if res.status != 0:
        log.warning("feeder_aware: LP failed (%s); no EV charging this cycle", res.message)
        p = np.zeros(n)
    else:
        p = np.clip(res.x[:n], 0.0, caps)
    return {(s.station_id, s.evse_id): float(p[i]) for i, s in enumerate(sessions)}


def _reported(
    fv: FeederView, sessions: Sequence[SessionView], col: dict[str, int]
) -> tuple[IntArray, FloatArray, FloatArray]:
    """Station bus rows, their reported voltages (p.u.) and reported station powers."""
    p_meas = np.zeros(len(fv.station_ids))
    vm_of: dict[int, float] = {}
    for s in sessions:
        j = col.get(s.station_id)
        if j is None:
            continue
        p_meas[j] += s.power_kw
        if s.voltage_v is not None:
            row = int(fv.station_bus_rows[j])
            vm_of[row] = min(vm_of.get(row, np.inf), s.voltage_v / fv.nominal_voltage_v)
    rows = np.array(sorted(vm_of), dtype=np.intp)
    return rows, np.array([vm_of[r] for r in rows], dtype=np.float64), p_meas
