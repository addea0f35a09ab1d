"""An LV feeder with EV stations, solved by power-grid-model or pandapower.

Everything per step is numpy: the pandapower net is read once when the feeder is
built, and the power-grid-model engine never touches pandas again after that.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import pandapower as pp
import pandapower.topology as top
from power_grid_model import (
    CalculationMethod,
    ComponentAttributeFilterOptions,
    ComponentType,
    DatasetType,
    PowerGridModel,
    initialize_array,
)
from power_grid_model.errors import PowerGridError
from power_grid_model_io.converters import PandaPowerConverter

from evtwin.grid.exceptions import BusMappingError, GridError, PowerFlowError
from evtwin.grid.networks import LV_MAX_KV
from evtwin.grid.profiles import BaseLoad, BaseLoadProfile, LoadTimeSeries
from evtwin.grid.results import GridLimits, GridResult
from evtwin.grid.unbalanced import (
    add_zero_sequence,
    neutral_current_a,
    phase_shares,
    spread_over_phases,
    unbalance_percent,
)

__all__ = ["Engine", "Feeder"]

Engine = Literal["pgm", "pandapower"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

_W_PER_MW = 1e6
_KW_PER_MW = 1e3
_STIFF_SOURCE_VA = 1e15  # source short-circuit power; makes the slack practically ideal
#: Batches this large are solved on every core (power-grid-model's threading).
_THREADED_BATCH = 64


class _PowerFlowEngine(Protocol):
    name: str

    def run(
        self, p_mw: FloatArray, q_mvar: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Solve with these powers for every load of ``net.load`` (in its row order).

        Returns bus voltages (net.bus order, p.u.), line loadings (net.line order, %)
        and transformer loadings (net.trafo order, % of rated power).
        Raises ``PowerFlowError`` (without time) when the solve fails.
        """
        ...

    def run_batch(
        self, p_mw: FloatArray, q_mvar: FloatArray, *, diverged_nan: bool = False
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Like :meth:`run` for ``N`` scenarios at once: inputs ``(N, n_loads)``,
        outputs ``(N, n_bus)``, ``(N, n_line)``, ``(N, n_trafo)``; with
        ``diverged_nan`` a scenario that does not converge gives NaN rows instead
        of raising."""
        ...


class _PandapowerEngine:
    """Reference engine: write the loads into ``net.load`` and call ``pp.runpp``."""

    name = "pandapower"

    def __init__(self, net: pp.pandapowerNet) -> None:
        self._net = net

    def run(
        self, p_mw: FloatArray, q_mvar: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        net = self._net
        net.load["p_mw"] = p_mw
        net.load["q_mvar"] = q_mvar
        try:
            # numba=False: numba is not a dependency, and pandapower warns on every call
            # when it is missing.  trafo_loading="power" rates transformers on apparent
            # power, as power-grid-model does.
            pp.runpp(net, numba=False, trafo_loading="power")
        except pp.LoadflowNotConverged as exc:
            raise PowerFlowError(self.name, str(exc) or "Newton-Raphson did not converge") from exc
        return (
            net.res_bus["vm_pu"].to_numpy(dtype=np.float64, copy=True),
            net.res_line["loading_percent"].to_numpy(dtype=np.float64, copy=True),
            net.res_trafo["loading_percent"].to_numpy(dtype=np.float64, copy=True),
        )

    def run_batch(
        self, p_mw: FloatArray, q_mvar: FloatArray, *, diverged_nan: bool = False
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        outs = []
        for p, q in zip(p_mw, q_mvar, strict=True):
            try:
                outs.append(self.run(p, q))
            except PowerFlowError:
                if not diverged_nan:
                    raise
                outs.append((np.full(len(self._net.bus), np.nan),
                             np.full(len(self._net.line), np.nan),
                             np.full(len(self._net.trafo), np.nan)))
        return (
            np.vstack([o[0] for o in outs]),
            np.vstack([o[1] for o in outs]),
            np.vstack([o[2] for o in outs]),
        )


def _pgm_model(net: pp.pandapowerNet) -> tuple[PowerGridModel, dict[ComponentType, Any],
                                                PandaPowerConverter]:
    """The network as a power-grid-model (built once), its input data and the converter
    that maps pandapower indices to its ids."""
    converter = PandaPowerConverter(system_frequency=float(net.f_hz))
    try:
        input_data, _ = converter.load_input_data(net, make_extra_info=False)
        # pandapower's ext_grid is an ideal voltage source in a power flow
        # (s_sc_max_mva is only used for short circuits), but the converter gives
        # the pgm source that short-circuit power, i.e. an internal impedance that
        # drops the voltage (0.4 % at the CIGRE LV MV bus).  Make it stiff.
        if ComponentType.source in input_data:
            input_data[ComponentType.source]["sk"] = _STIFF_SOURCE_VA
        model = PowerGridModel(input_data, system_frequency=float(net.f_hz))
    except (NotImplementedError, RuntimeError, KeyError, PowerGridError) as exc:
        raise GridError(f"Cannot convert the network to power-grid-model: {exc}") from exc
    return model, input_data, converter


class _PgmEngine:
    """Fast engine: a power-grid-model built once, updated per step with load powers only."""

    name = "pgm"

    def __init__(self, net: pp.pandapowerNet) -> None:
        self._model, input_data, converter = _pgm_model(net)

        # The converter turns every pandapower load into three sym_loads (constant
        # power, impedance and current, named by `name=`); the feeder makes every load
        # constant power, so only the "const_power" ones are updated.
        load_ids = np.array(
            [converter.get_id("load", int(i), name="const_power") for i in net.load.index],
            dtype=np.int32,
        )
        self._load_ids = load_ids
        # A batch of one scenario: calculate_power_flow wants batch-shaped update data.
        self._update = initialize_array(
            DatasetType.update, ComponentType.sym_load, (1, len(load_ids))
        )
        self._update["id"][0] = load_ids
        # A network without any load has no sym_load component to update.
        self._update_data = {ComponentType.sym_load: self._update} if len(load_ids) else None
        # Views into the update array, written in place each step.
        self._p_w = self._update["p_specified"][0]
        self._q_var = self._update["q_specified"][0]

        # Output rows follow input rows; map pandapower row order onto them once.
        self._node_pos = _positions(
            input_data[ComponentType.node]["id"],
            [converter.get_id("bus", int(b)) for b in net.bus.index],
        )
        self._outputs: list[ComponentType] = [ComponentType.node]
        self._line_pos = np.empty(0, dtype=np.intp)
        if len(net.line):
            self._outputs.append(ComponentType.line)
            self._line_pos = _positions(
                input_data[ComponentType.line]["id"],
                [converter.get_id("line", int(i)) for i in net.line.index],
            )
        self._trafo_pos = np.empty(0, dtype=np.intp)
        self._trafo_scale = np.empty(0, dtype=np.float64)
        if len(net.trafo):
            self._outputs.append(ComponentType.transformer)
            self._trafo_pos = _positions(
                input_data[ComponentType.transformer]["id"],
                [converter.get_id("trafo", int(i)) for i in net.trafo.index],
            )
            # pgm's loading is S / (sn * parallel); pandapower also divides by the
            # derating factor df.
            self._trafo_scale = 100.0 / net.trafo["df"].to_numpy(dtype=np.float64)
        # Batches ask only for what the results carry (less to fill and copy).
        wanted: dict[ComponentType, set[str] | list[str] | ComponentAttributeFilterOptions
                     | None] = {ComponentType.node: ["u_pu"], ComponentType.line: ["loading"],
                                ComponentType.transformer: ["loading"]}
        self._batch_outputs: dict[ComponentType, set[str] | list[str]
                                  | ComponentAttributeFilterOptions | None] = {
            c: wanted[c] for c in self._outputs}

    def run(
        self, p_mw: FloatArray, q_mvar: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        np.multiply(p_mw, _W_PER_MW, out=self._p_w)
        np.multiply(q_mvar, _W_PER_MW, out=self._q_var)
        try:
            out = self._model.calculate_power_flow(
                update_data=self._update_data,
                symmetric=True,
                calculation_method=CalculationMethod.newton_raphson,
                output_component_types=self._outputs,
            )
        except PowerGridError as exc:
            raise PowerFlowError(self.name, _describe_pgm_error(exc)) from exc
        bus_vm_pu = _scenario(out[ComponentType.node]["u_pu"])[self._node_pos]
        if len(self._line_pos):
            line_percent = _scenario(out[ComponentType.line]["loading"])[self._line_pos] * 100.0
        else:
            line_percent = np.empty(0, dtype=np.float64)
        if len(self._trafo_pos):
            trafo_loading = _scenario(out[ComponentType.transformer]["loading"])[self._trafo_pos]
            trafo_percent = trafo_loading * self._trafo_scale
        else:
            trafo_percent = np.empty(0, dtype=np.float64)
        return bus_vm_pu, line_percent, trafo_percent

    def run_batch(
        self, p_mw: FloatArray, q_mvar: FloatArray, *, diverged_nan: bool = False
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Many load cases on the one model: by the iterative current method, which
        factorises the admittance matrix once for the whole batch (about twice
        Newton-Raphson's rate on LV feeders, answers within 1e-9 pu of it), and the
        cases it does not converge on again by Newton-Raphson."""
        n = p_mw.shape[0]
        bus = np.full((n, len(self._node_pos)), np.nan)
        line = np.full((n, len(self._line_pos)), np.nan)
        trafo = np.full((n, len(self._trafo_pos)), np.nan)
        todo = np.arange(n)
        for method in (CalculationMethod.iterative_current, CalculationMethod.newton_raphson):
            if not len(todo):
                break
            last = method == CalculationMethod.newton_raphson
            failed = self._solve_rows(p_mw[todo], q_mvar[todo], method,
                                      raise_on_error=last and not diverged_nan,
                                      into=(todo, bus, line, trafo))
            todo = todo[failed]
        return bus, line, trafo

    def _solve_rows(self, p_mw: FloatArray, q_mvar: FloatArray, method: CalculationMethod, *,
                    raise_on_error: bool,
                    into: tuple[IntArray, FloatArray, FloatArray, FloatArray]
                    ) -> npt.NDArray[np.bool_]:
        """Solve these cases; write the converged ones' results into ``into``'s rows;
        return which did not converge."""
        rows, bus, line, trafo = into
        n = p_mw.shape[0]
        # A separate update array: the per-step one (self._update) is left alone.
        update = initialize_array(
            DatasetType.update, ComponentType.sym_load, (n, len(self._load_ids))
        )
        update["id"] = self._load_ids
        update["p_specified"] = p_mw * _W_PER_MW
        update["q_specified"] = q_mvar * _W_PER_MW
        try:
            out = self._model.calculate_power_flow(
                update_data={ComponentType.sym_load: update} if len(self._load_ids) else None,
                symmetric=True,
                calculation_method=method,
                output_component_types=self._batch_outputs,
                continue_on_batch_error=not raise_on_error,
                # Large batches on every core (scenarios are independent: same results).
                threading=0 if n >= _THREADED_BATCH else -1,
            )
        except PowerGridError as exc:
            raise PowerFlowError(self.name, _describe_pgm_error(exc)) from exc
        failed = np.zeros(n, dtype=bool)
        if not raise_on_error and self._model.batch_error is not None:
            failed[np.asarray(self._model.batch_error.failed_scenarios, dtype=np.intp)] = True
        ok = rows[~failed]
        bus[ok] = np.atleast_2d(out[ComponentType.node]["u_pu"])[~failed][:, self._node_pos]
        if len(self._line_pos):
            line[ok] = np.atleast_2d(out[ComponentType.line]["loading"])[~failed][
                :, self._line_pos] * 100.0
        if len(self._trafo_pos):
            trafo[ok] = np.atleast_2d(out[ComponentType.transformer]["loading"])[~failed][
                :, self._trafo_pos] * self._trafo_scale
        return failed


class _PgmAsymEngine:
    """Unbalanced engine: every load an ``asym_load`` of power-grid-model, its power split
    over L1, L2, L3 by fixed shares (a single-phase connection all on its phase), solved
    with ``symmetric=False``. ``run`` returns bus voltages per phase ``(n_bus, 3)`` and
    keeps each bus's voltage unbalance (``last_vuf_percent``) and each line's neutral
    current (``last_neutral_a``)."""

    name = "pgm-asym"

    def __init__(self, net: pp.pandapowerNet, shares: FloatArray) -> None:
        net = copy.deepcopy(net)
        # Every load as an asymmetric load, in net.load row order (ids follow).
        loads = net.load
        rows = []
        for _, load in loads.iterrows():
            rows.append(pp.create_asymmetric_load(net, int(load.bus), name=str(load["name"]),
                                                  in_service=bool(load.in_service)))
        net.load.drop(net.load.index, inplace=True)
        self._model, input_data, converter = _pgm_model(net)
        self._shares = shares
        load_ids = np.array([converter.get_id("asymmetric_load", int(r)) for r in rows],
                            dtype=np.int32)
        self._load_ids = load_ids
        self._node_pos = _positions(input_data[ComponentType.node]["id"],
                                    [converter.get_id("bus", int(b)) for b in net.bus.index])
        self._outputs = [ComponentType.node]
        self._line_pos = np.empty(0, dtype=np.intp)
        self._line_from = np.empty(0, dtype=np.intp)
        if len(net.line):
            self._outputs.append(ComponentType.line)
            self._line_pos = _positions(input_data[ComponentType.line]["id"],
                                        [converter.get_id("line", int(i)) for i in net.line.index])
            bus_row = {int(b): r for r, b in enumerate(net.bus.index)}
            self._line_from = np.array([bus_row[int(b)] for b in net.line.from_bus],
                                       dtype=np.intp)
        self._trafo_pos = np.empty(0, dtype=np.intp)
        self._trafo_scale = np.empty(0, dtype=np.float64)
        self._trafo_phase_rating_va = np.empty(0, dtype=np.float64)
        if len(net.trafo):
            self._outputs.append(ComponentType.transformer)
            self._trafo_pos = _positions(
                input_data[ComponentType.transformer]["id"],
                [converter.get_id("trafo", int(i)) for i in net.trafo.index])
            self._trafo_scale = 100.0 / net.trafo["df"].to_numpy(dtype=np.float64)
            sn = input_data[ComponentType.transformer]["sn"][self._trafo_pos]
            # Per phase a winding carries a third of the rating.
            self._trafo_phase_rating_va = np.asarray(sn, dtype=np.float64) / 3.0
        self.last_vuf_percent = np.empty(0, dtype=np.float64)
        self.last_neutral_a = np.empty(0, dtype=np.float64)
        #: Each batch scenario's voltage unbalance per bus (%), and each bus's highest
        #: phase voltage (pu), from the last run_batch.
        self.last_batch_vuf_percent = np.empty((0, 0), dtype=np.float64)
        self.last_batch_vm_high_pu = np.empty((0, 0), dtype=np.float64)

    def _update(self, p_mw: FloatArray, q_mvar: FloatArray) -> dict[ComponentType, Any] | None:
        p = np.atleast_2d(p_mw)
        q = np.atleast_2d(q_mvar)
        update = initialize_array(DatasetType.update, ComponentType.asym_load,
                                  (p.shape[0], len(self._load_ids)))
        update["id"] = self._load_ids
        update["p_specified"] = p[:, :, None] * self._shares[None, :, :] * _W_PER_MW
        update["q_specified"] = q[:, :, None] * self._shares[None, :, :] * _W_PER_MW
        return {ComponentType.asym_load: update} if len(self._load_ids) else None

    def _calculate(self, update: dict[ComponentType, Any] | None, n: int, *,
                   method: CalculationMethod, tolerate: bool) -> dict[ComponentType, Any]:
        try:
            return self._model.calculate_power_flow(
                update_data=update, symmetric=False, calculation_method=method,
                output_component_types=self._outputs, continue_on_batch_error=tolerate,
                threading=0 if n >= _THREADED_BATCH else -1)
        except PowerGridError as exc:
            raise PowerFlowError(self.name, _describe_pgm_error(exc)) from exc

    def run(
        self, p_mw: FloatArray, q_mvar: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        out = self._calculate(self._update(p_mw, q_mvar), 1,
                              method=CalculationMethod.newton_raphson, tolerate=False)
        node = out[ComponentType.node][0][self._node_pos]
        bus_vm = np.asarray(node["u_pu"], dtype=np.float64)
        self.last_vuf_percent = unbalance_percent(node["u"], node["u_angle"])
        line = np.empty(0, dtype=np.float64)
        if len(self._line_pos):
            lines = out[ComponentType.line][0][self._line_pos]
            line = np.asarray(lines["loading"], dtype=np.float64) * 100.0
            self.last_neutral_a = neutral_current_a(
                lines["p_from"], lines["q_from"], node["u"][self._line_from],
                node["u_angle"][self._line_from])
        trafo = np.empty(0, dtype=np.float64)
        if len(self._trafo_pos):
            trafo = self._trafo_loading(out[ComponentType.transformer][0][self._trafo_pos])
        return bus_vm, line, trafo

    def _trafo_loading(self, trafo: Any) -> FloatArray:
        """Transformer loading in % of rating on its most loaded phase and side
        (power-grid-model's asymmetric ``loading`` sums the phases, which hides one
        phase's overload)."""
        s_phase = np.maximum(np.asarray(trafo["s_from"], dtype=np.float64),
                             np.asarray(trafo["s_to"], dtype=np.float64)).max(axis=-1)
        return np.asarray(s_phase / self._trafo_phase_rating_va * self._trafo_scale,
                          dtype=np.float64)

    def run_batch(
        self, p_mw: FloatArray, q_mvar: FloatArray, *, diverged_nan: bool = False
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Per scenario, each bus's lowest phase voltage (its highest is kept in
        ``last_batch_vm_high_pu``), lines and transformers (most loaded phase)."""
        n = p_mw.shape[0]
        out = self._calculate(self._update(p_mw, q_mvar), n,
                              method=CalculationMethod.newton_raphson, tolerate=diverged_nan)
        failed = np.zeros(n, dtype=bool)
        if diverged_nan and self._model.batch_error is not None:
            failed[np.asarray(self._model.batch_error.failed_scenarios, dtype=np.intp)] = True
        node = out[ComponentType.node][:, self._node_pos]
        u = np.asarray(node["u_pu"], dtype=np.float64)
        low = u.min(axis=2)
        self.last_batch_vm_high_pu = u.max(axis=2)
        self.last_batch_vm_high_pu[failed] = np.nan
        self.last_batch_vuf_percent = unbalance_percent(node["u"], node["u_angle"])
        self.last_batch_vuf_percent[failed] = np.nan
        line = (np.asarray(out[ComponentType.line]["loading"], dtype=np.float64)[
            :, self._line_pos] * 100.0 if len(self._line_pos) else np.empty((n, 0)))
        trafo = (self._trafo_loading(out[ComponentType.transformer][:, self._trafo_pos])
                 if len(self._trafo_pos) else np.empty((n, 0)))
        for a in (low, line, trafo):
            a[failed] = np.nan
        return low, line, trafo


def _scenario(values: FloatArray) -> FloatArray:
    """The single scenario of a batch output (a plain output when there was no update)."""
    return values[0] if values.ndim == 2 else values


def _describe_pgm_error(exc: PowerGridError) -> str:
    """One line naming the real cause; a batch error only says 'errors in the batch'."""
    inner: list[PowerGridError] = getattr(exc, "errors", None) or [exc]
    first = inner[0]
    text = " ".join(str(first).split())
    return f"{type(first).__name__}: {text}"


def _positions(ids: npt.ArrayLike, wanted: Sequence[int]) -> IntArray:
    """Row of each id of ``wanted`` in ``ids``."""
    row_of = {int(v): row for row, v in enumerate(np.asarray(ids))}
    return np.array([row_of[int(w)] for w in wanted], dtype=np.intp)


def _readonly(a: FloatArray) -> FloatArray:
    a.flags.writeable = False
    return a


class Feeder:
    """An LV feeder with household base loads and one load element per EV station.

    Args:
        net: pandapower network; it is copied, never modified.
        n_stations: number of EV stations.
        station_buses: pandapower bus index of each station, or ``None`` to place them
            by the rule below.
        engine: ``"pgm"`` (power-grid-model, built once, fast) or ``"pandapower"``
            (``pp.runpp`` every step, the reference).
        base_profile: multipliers on each household's nominal power per step; defaults
            to ``BaseLoadProfile()`` (residential H0-like shape, 5 % noise). A
            :class:`~evtwin.grid.profiles.LoadTimeSeries` (one per ``net.load`` row, e.g.
            a SimBench grid's profiles) gives every load its own P and Q multipliers.
        limits: limits that :meth:`violations` checks results against.
        der_buses: pandapower bus index of each distributed energy resource (PV
            plant, stationary battery), solved with ``der_p_kw`` (load convention:
            negative = feeding in).
        unbalanced: solve the three-phase unbalanced power flow (power-grid-model,
            ``symmetric=False``): households single-phase, spread over L1, L2, L3 by
            ``phase_seed`` (counts differ by at most one); stations three-phase unless
            ``station_phases`` says 1 (then spread the same way) or
            ``station_connections`` names each one's phase (0, 1, 2; -1 three-phase).
            Zero-sequence data the network lacks is filled by
            :func:`~evtwin.grid.unbalanced.add_zero_sequence` (listed in
            ``zero_sequence_filled``). Results then carry per-phase voltages, the
            voltage unbalance factor and the neutral current.

    The feeder's loads: every load of ``net`` is a household (its ``p_mw``/``q_mvar``
    times ``scaling`` are its nominal power; it is modelled as constant power). In an
    MV grid (a SimBench one) these include MV loads that stand for whole LV grids.  One
    load named ``ev_station_{i}`` is added per station and one named ``der_{j}`` per
    distributed resource (p = q = 0 until solved).

    Stations go on LV buses only (nominal voltage up to 1 kV): never on the MV side.
    Station placement when ``station_buses`` is None: take the in-service LV buses that
    carry a household load and are supplied from the external grid; sort them by
    electrical distance from the external grid (shortest path over lines in km,
    transformers and closed bus-bus switches count zero; ties by bus index); station
    ``i`` goes to the bus at position ``floor(i * n_load_buses / n_stations)`` of that
    list, so stations spread evenly from near to far (and share buses when there are
    more stations than load buses).

    Attributes:
        net: the feeder's own copy of the network, with the station loads added (the
            pandapower engine writes loads and results into it; the pgm engine does not).
        engine, limits, base_profile: as given.

    Raises:
        BusMappingError: a station bus does not exist or is not supplied, the number of
            buses given differs from ``n_stations``, or there is no load bus to use.
        GridError: the network cannot be converted for the pgm engine.
        ValueError: bad ``n_stations`` or ``engine``.
    """

    def __init__(
        self,
        net: pp.pandapowerNet,
        *,
        n_stations: int,
        station_buses: Sequence[int] | None = None,
        engine: Engine = "pgm",
        base_profile: BaseLoad | None = None,
        limits: GridLimits = GridLimits(),  # noqa: B008  (frozen, so sharing is safe)
        der_buses: Sequence[int] = (),
        unbalanced: bool = False,
        station_phases: Sequence[int] | None = None,
        station_connections: Sequence[int] | None = None,
        phase_seed: int = 0,
    ) -> None:
        if n_stations < 0:
            raise ValueError(f"n_stations must be >= 0, got {n_stations}")
        if engine not in ("pgm", "pandapower"):
            raise ValueError(f"Unknown engine {engine!r}; valid: 'pgm', 'pandapower'")
        if unbalanced and engine != "pgm":
            raise ValueError("an unbalanced feeder is solved by the pgm engine "
                             "(pandapower's runpp_3ph is the reference in the tests)")
        if station_phases is not None and (len(station_phases) != n_stations or any(
                n not in (1, 3) for n in station_phases)):
            raise ValueError("station_phases: 1 or 3 for each station")
        if station_connections is not None and (len(station_connections) != n_stations or any(
                c not in (-1, 0, 1, 2) for c in station_connections)):
            raise ValueError("station_connections: -1 (three-phase) or 0, 1, 2 (L1, L2, L3) "
                             "for each station")
        self.engine: Engine = engine
        self.limits: GridLimits = limits
        self.base_profile: BaseLoad = (BaseLoadProfile() if base_profile is None
                                       else base_profile)

        net = copy.deepcopy(net)
        supplied = _supplied_buses(net)
        if station_buses is None:
            buses = _spread_station_buses(net, n_stations, supplied)
        else:
            buses = _check_station_buses(net, n_stations, station_buses, supplied,
                                         lv_only=True)
        self._station_buses = buses
        self._der_buses = _check_station_buses(net, len(der_buses), der_buses, supplied)

        # Households: the existing loads, made constant power with scaling folded in,
        # so both engines see exactly p_mw / q_mvar.
        load = net.load
        scaling = load["scaling"].to_numpy(dtype=np.float64)
        load["p_mw"] = load["p_mw"].to_numpy(dtype=np.float64) * scaling
        load["q_mvar"] = load["q_mvar"].to_numpy(dtype=np.float64) * scaling
        load["scaling"] = 1.0
        for col in (
            "const_z_p_percent",
            "const_i_p_percent",
            "const_z_q_percent",
            "const_i_q_percent",
            "const_z_percent",
            "const_i_percent",
        ):
            if col in load.columns:
                load[col] = 0.0
        self._n_households = len(load)
        if (isinstance(self.base_profile, LoadTimeSeries)
                and self.base_profile.n_loads != self._n_households):
            raise ValueError(f"base_profile is a series of {self.base_profile.n_loads} loads; "
                             f"the network has {self._n_households}")
        self._nominal_p_mw: FloatArray = load["p_mw"].to_numpy(dtype=np.float64, copy=True)
        self._nominal_q_mvar = load["q_mvar"].to_numpy(dtype=np.float64, copy=True)
        self._household_in_service = load["in_service"].to_numpy(dtype=np.float64, copy=True)

        if n_stations:
            pp.create_loads(
                net,
                buses=buses,
                p_mw=0.0,
                q_mvar=0.0,
                name=[f"ev_station_{i}" for i in range(n_stations)],
            )
        if len(der_buses):
            pp.create_loads(
                net,
                buses=self._der_buses,
                p_mw=0.0,
                q_mvar=0.0,
                name=[f"der_{j}" for j in range(len(der_buses))],
            )
        self.net = net

        # Hot-path buffers, in net.load row order: households, stations, DER.
        n_loads = self._n_households + n_stations + len(der_buses)
        self._der_p_kw: FloatArray = np.zeros(len(der_buses))
        self._p_mw = np.zeros(n_loads)
        self._q_mvar = np.zeros(n_loads)
        self._household_p_mw = np.zeros(self._n_households)
        self._household_q_mvar = np.zeros(self._n_households)

        self._bus_index: npt.NDArray[np.int64] = net.bus.index.to_numpy(dtype=np.int64, copy=True)
        self._bus_index.flags.writeable = False
        bus_row = {int(b): row for row, b in enumerate(self._bus_index)}
        self._station_bus_rows = np.array([bus_row[b] for b in buses], dtype=np.intp)
        in_service = net.bus["in_service"].to_numpy(dtype=bool)
        self._stat_rows = np.array(
            [row for row, b in enumerate(self._bus_index) if in_service[row] and b in supplied],
            dtype=np.intp,
        )
        self._trafo_rating_kva = float(
            (net.trafo["sn_mva"] * net.trafo["parallel"]).sum() * _KW_PER_MW
        )
        self._sum_household_p_kw = math.nan

        #: Unbalanced: the phase (0, 1, 2 = L1, L2, L3) of every single-phase
        #: connection, -1 for three-phase ones (households, stations, DER in that
        #: order); seeded by ``phase_seed``, spread evenly (see spread_over_phases).
        self.unbalanced = unbalanced
        #: The seed of the households' phases (a copy of the feeder with the same seed and
        #: station connections has the same phases).
        self.phase_seed = phase_seed
        self.load_phases: npt.NDArray[np.int64] = np.full(n_loads, -1, dtype=np.int64)
        self.zero_sequence_filled: list[str] = []
        if unbalanced:
            rng = np.random.default_rng(phase_seed)
            n_hh = self._n_households
            self.load_phases[:n_hh] = spread_over_phases(n_hh, rng)
            if station_connections is not None:
                self.load_phases[n_hh:n_hh + n_stations] = station_connections
            else:
                single = [i for i, n in enumerate(station_phases or [3] * n_stations) if n == 1]
                self.load_phases[[n_hh + i for i in single]] = spread_over_phases(len(single),
                                                                                  rng)
            asym_net = copy.deepcopy(net)
            self.zero_sequence_filled = add_zero_sequence(asym_net)
            self._engine: _PowerFlowEngine = _PgmAsymEngine(
                asym_net, phase_shares(self.load_phases.tolist()))
        else:
            self._engine = _PgmEngine(net) if engine == "pgm" else _PandapowerEngine(net)

    # ----------------------------------------------------------------- properties
    @property
    def n_stations(self) -> int:
        """Number of EV stations."""
        return len(self._station_buses)

    @property
    def n_households(self) -> int:
        """Number of household loads (the network's original loads)."""
        return self._n_households

    @property
    def household_nominal_p_kw(self) -> FloatArray:
        """Nominal active power of each household in kW (a copy)."""
        return self._nominal_p_mw * _KW_PER_MW

    @property
    def station_buses(self) -> list[int]:
        """pandapower bus index of each EV station, in station order."""
        return list(self._station_buses)

    @property
    def load_p_mw(self) -> FloatArray:
        """Active power (MW) of every ``net.load`` row in the last :meth:`solve`, in row
        order (households, stations, DER; feeding in is negative), a copy: with ``net``,
        what an outside power flow needs to solve the same step."""
        return self._p_mw.copy()

    @property
    def load_q_mvar(self) -> FloatArray:
        """Reactive power (Mvar) of every ``net.load`` row in the last :meth:`solve`."""
        return self._q_mvar.copy()

    @property
    def der_buses(self) -> list[int]:
        """pandapower bus index of each distributed resource, in order."""
        return list(self._der_buses)

    @property
    def bus_count(self) -> int:
        """Number of buses in the network."""
        return len(self._bus_index)

    @property
    def bus_index(self) -> npt.NDArray[np.int64]:
        """pandapower bus index of each entry of ``GridResult.bus_vm_pu`` (read-only)."""
        return self._bus_index

    @property
    def monitored_bus_rows(self) -> IntArray:
        """Rows of ``GridResult.bus_vm_pu`` that ``vm_min_pu``/``vm_max_pu`` cover: the
        in-service buses supplied from the external grid (a copy)."""
        return self._stat_rows.copy()

    @property
    def household_nominal_q_kvar(self) -> FloatArray:
        """Nominal reactive power of each household in kvar (a copy)."""
        return self._nominal_q_mvar * _KW_PER_MW

    @property
    def trafo_rating_kva(self) -> float:
        """Sum of the transformers' rated power (sn_mva × parallel) in kVA."""
        return self._trafo_rating_kva

    @property
    def sum_household_p_kw(self) -> float:
        """Total in-service household active power of the last solve in kW (NaN before)."""
        return self._sum_household_p_kw

    # ----------------------------------------------------------------- solving
    def violations(self, result: GridResult) -> list[str]:
        """Names of the feeder's ``limits`` that ``result`` breaks (see GridResult.violations)."""
        return result.violations(self.limits)

    def solve(self, t_s: float, ev_p_kw: npt.ArrayLike, rng: np.random.Generator,
              der_p_kw: npt.ArrayLike | None = None) -> GridResult:
        """Solve the feeder at time ``t_s`` with these EV station powers.

        Household powers are nominal p and q times one ``base_profile`` draw per
        household (so each keeps its power factor; a ``LoadTimeSeries`` has its own P
        and Q multipliers per load); EV loads are ``ev_p_kw`` at unity
        power factor (negative = discharging).

        Args:
            t_s: simulation time in seconds (0 = midnight), drives the profile.
            ev_p_kw: active power of each station in kW, shape ``(n_stations,)``.
            rng: the run's seeded generator; ``n_households`` normals are drawn.
            der_p_kw: active power of each distributed resource in kW (negative =
                feeding in), shape ``(len(der_buses),)``; None keeps the last values.

        Raises:
            PowerFlowError: the power flow did not converge (carries ``t_s``).
            ValueError: ``ev_p_kw`` or ``der_p_kw`` has the wrong shape.
        """
        profile = self.base_profile
        if isinstance(profile, LoadTimeSeries):
            p_factor, q_factor = profile.sample(t_s, rng, self._n_households)
        else:
            p_factor = q_factor = profile.sample(t_s, rng, self._n_households)
        np.multiply(self._nominal_p_mw, p_factor, out=self._household_p_mw)
        np.multiply(self._nominal_q_mvar, q_factor, out=self._household_q_mvar)
        if der_p_kw is not None:
            self._set_der(der_p_kw)
        return self._solve(self._household_p_mw, self._household_q_mvar, ev_p_kw, t_s)

    def _set_der(self, der_p_kw: npt.ArrayLike) -> None:
        der = np.asarray(der_p_kw, dtype=np.float64)
        if der.shape != self._der_p_kw.shape:
            raise ValueError(f"der_p_kw must have shape {self._der_p_kw.shape}, got {der.shape}")
        self._der_p_kw[:] = der

    def solve_raw(
        self,
        household_p_mw: npt.ArrayLike,
        household_q_mvar: npt.ArrayLike,
        ev_p_kw: npt.ArrayLike,
    ) -> GridResult:
        """Solve with explicit household powers (MW, Mvar) and EV powers (kW).

        Bypasses the base profile, so both engines can be fed identical inputs.

        Raises:
            PowerFlowError: the power flow did not converge.
            ValueError: an input has the wrong shape.
        """
        p = np.asarray(household_p_mw, dtype=np.float64)
        q = np.asarray(household_q_mvar, dtype=np.float64)
        for label, arr in (("household_p_mw", p), ("household_q_mvar", q)):
            if arr.shape != (self._n_households,):
                raise ValueError(
                    f"{label} must have shape ({self._n_households},), got {arr.shape}"
                )
        return self._solve(p, q, ev_p_kw, None)

    def solve_batch(
        self,
        household_p_mw: npt.ArrayLike,
        household_q_mvar: npt.ArrayLike,
        ev_p_kw: npt.ArrayLike,
        *,
        diverged_nan: bool = False,
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Solve ``N`` independent scenarios at once (power-grid-model batch), e.g. to
        measure sensitivities by perturbation.

        Args:
            household_p_mw: household active powers in MW, shape ``(N, n_households)``.
            household_q_mvar: household reactive powers in Mvar, same shape.
            ev_p_kw: EV station powers in kW, shape ``(N, n_stations)``.

        Distributed resources are held at the powers of the last solve.

        Returns:
            Bus voltages in p.u. ``(N, bus_count)`` in :attr:`bus_index` order, line
            loadings in % ``(N, n_line)`` and transformer loadings in % of rated power
            ``(N, n_trafo)``, in ``net.line`` / ``net.trafo`` order.  The feeder's state
            (last-solve figures, per-step buffers) is left untouched.

        With ``diverged_nan`` a scenario that does not converge (a load beyond what
        the feeder can carry at all) gives NaN rows instead of an error.

        Raises:
            PowerFlowError: a scenario did not converge (unless ``diverged_nan``).
            ValueError: an input has the wrong shape.
        """
        p = np.atleast_2d(np.asarray(household_p_mw, dtype=np.float64))
        q = np.atleast_2d(np.asarray(household_q_mvar, dtype=np.float64))
        ev = np.atleast_2d(np.asarray(ev_p_kw, dtype=np.float64))
        n = ev.shape[0]
        for label, arr, width in (
            ("household_p_mw", p, self._n_households),
            ("household_q_mvar", q, self._n_households),
            ("ev_p_kw", ev, len(self._station_buses)),
        ):
            if arr.shape != (n, width):
                raise ValueError(f"{label} must have shape ({n}, {width}), got {arr.shape}")
        der = np.tile(self._der_p_kw / _KW_PER_MW, (n, 1))
        # (Unbalanced: each scenario's per-bus voltage unbalance is then in
        # batch_unbalance_percent.)
        p_all = np.hstack([p, ev / _KW_PER_MW, der])
        q_all = np.hstack([q, np.zeros_like(ev), np.zeros_like(der)])
        return self._engine.run_batch(p_all, q_all, diverged_nan=diverged_nan)

    @property
    def batch_vm_high_pu(self) -> FloatArray | None:
        """Unbalanced feeder: every bus's highest phase voltage in each scenario of the
        last :meth:`solve_batch` (which returns the lowest); None if balanced."""
        engine = self._engine
        return engine.last_batch_vm_high_pu if isinstance(engine, _PgmAsymEngine) else None

    @property
    def batch_unbalance_percent(self) -> FloatArray | None:
        """Unbalanced feeder: the voltage unbalance factor (%) of every bus in each
        scenario of the last :meth:`solve_batch`, ``(N, bus_count)``; None if balanced."""
        engine = self._engine
        return engine.last_batch_vuf_percent if isinstance(engine, _PgmAsymEngine) else None

    def _solve(
        self,
        household_p_mw: FloatArray,
        household_q_mvar: FloatArray,
        ev_p_kw: npt.ArrayLike,
        t_s: float | None,
    ) -> GridResult:
        ev = np.asarray(ev_p_kw, dtype=np.float64)
        n_hh = self._n_households
        if ev.shape != (len(self._station_buses),):
            raise ValueError(
                f"ev_p_kw must have shape ({len(self._station_buses)},), got {ev.shape}"
            )
        self._p_mw[:n_hh] = household_p_mw
        self._q_mvar[:n_hh] = household_q_mvar
        n_ev = len(self._station_buses)
        np.multiply(ev, 1.0 / _KW_PER_MW, out=self._p_mw[n_hh:n_hh + n_ev])
        np.multiply(self._der_p_kw, 1.0 / _KW_PER_MW, out=self._p_mw[n_hh + n_ev:])
        try:
            bus_vm_pu, line_percent, trafo_percent = self._engine.run(self._p_mw, self._q_mvar)
        except PowerFlowError as exc:
            if t_s is None:
                raise
            raise PowerFlowError(exc.engine, exc.detail, t_s) from exc.__cause__
        self._sum_household_p_kw = float(household_p_mw @ self._household_in_service) * _KW_PER_MW

        if bus_vm_pu.ndim == 2:  # unbalanced: per phase
            return self._unbalanced_result(bus_vm_pu, line_percent, trafo_percent)
        stat_vm = bus_vm_pu[self._stat_rows]
        return GridResult(
            vm_min_pu=float(stat_vm.min()),
            vm_max_pu=float(stat_vm.max()),
            line_loading_max_percent=float(np.nanmax(line_percent)) if line_percent.size else 0.0,
            trafo_loading_percent=float(np.nanmax(trafo_percent)) if trafo_percent.size else 0.0,
            station_vm_pu=_readonly(bus_vm_pu[self._station_bus_rows]),
            bus_vm_pu=_readonly(bus_vm_pu),
            line_loadings_percent=_readonly(line_percent),
            trafo_loadings_percent=_readonly(trafo_percent),
        )


    def _station_phase_vm(self, phase_vm: FloatArray, lowest: FloatArray) -> FloatArray:
        """Each station's voltage: its own phase's (single-phase), else its bus's lowest."""
        rows = self._station_bus_rows
        phases = self.load_phases[self._n_households:self._n_households + len(rows)]
        own = phase_vm[rows, np.maximum(phases, 0)]
        return np.where(phases >= 0, own, lowest[rows])

    def _unbalanced_result(self, phase_vm: FloatArray, line_percent: FloatArray,
                           trafo_percent: FloatArray) -> GridResult:
        engine = self._engine
        assert isinstance(engine, _PgmAsymEngine)
        stat = phase_vm[self._stat_rows]
        lowest = phase_vm.min(axis=1)
        vuf = engine.last_vuf_percent[self._stat_rows]
        neutral = engine.last_neutral_a
        return GridResult(
            vm_min_pu=float(stat.min()),
            vm_max_pu=float(stat.max()),
            line_loading_max_percent=float(np.nanmax(line_percent)) if line_percent.size else 0.0,
            trafo_loading_percent=float(np.nanmax(trafo_percent)) if trafo_percent.size else 0.0,
            station_vm_pu=_readonly(self._station_phase_vm(phase_vm, lowest)),
            bus_vm_pu=_readonly(lowest),
            line_loadings_percent=_readonly(line_percent),
            trafo_loadings_percent=_readonly(trafo_percent),
            bus_vm_phase_pu=_readonly(np.array(phase_vm)),
            vuf_max_percent=float(np.nanmax(vuf)) if vuf.size else 0.0,
            neutral_current_max_a=float(np.nanmax(neutral)) if neutral.size else 0.0,
        )


# --------------------------------------------------------------------- station mapping
def supplied_buses(net: pp.pandapowerNet) -> set[int]:
    """In-service buses the external grid supplies: where loads and resources can go."""
    return {int(b) for b in _supplied_buses(net)}


def place_stations(net: pp.pandapowerNet, n_stations: int) -> list[int]:
    """The buses :class:`Feeder` puts ``n_stations`` stations on when none are given."""
    return _spread_station_buses(net, n_stations, _supplied_buses(net))


def _supplied_buses(net: pp.pandapowerNet) -> set[int]:
    """In-service buses connected to an in-service external grid."""
    unsupplied = {int(b) for b in top.unsupplied_buses(net)}
    in_service = net.bus.index[net.bus["in_service"].to_numpy(dtype=bool)]
    return {int(b) for b in in_service} - unsupplied


def load_buses(net: pp.pandapowerNet) -> list[int]:
    """The in-service LV buses (up to 1 kV) with a load that the external grid supplies,
    nearest first (electrical distance along the lines, ties by bus index). MV buses
    are left out: their loads stand for whole LV grids, and chargers are not put on
    the MV side."""
    supplied = _supplied_buses(net)
    active = net.load["in_service"].to_numpy(dtype=bool)
    lv = {int(b) for b in net.bus.index[net.bus["vn_kv"].to_numpy(dtype=np.float64)
                                       <= LV_MAX_KV]}
    buses = {int(b) for b in net.load["bus"].to_numpy()[active]} & supplied & lv
    distance_km = distance_from_source_km(net)
    return sorted(buses, key=lambda b: (distance_km.get(b, math.inf), b))


def _spread_station_buses(net: pp.pandapowerNet, n_stations: int, supplied: set[int]) -> list[int]:
    if n_stations == 0:
        return []
    ordered = load_buses(net)
    if not ordered:
        raise BusMappingError(
            None, "the network has no supplied LV bus with a load to place stations on"
        )
    n_load = len(ordered)
    return [ordered[i * n_load // n_stations] for i in range(n_stations)]


def distance_from_source_km(net: pp.pandapowerNet) -> dict[int, float]:
    """Shortest line length in km from the nearest in-service external grid to each bus."""
    graph = top.create_nxgraph(net)
    slack_buses = net.ext_grid["bus"][net.ext_grid["in_service"].to_numpy(dtype=bool)]
    best: dict[int, float] = {}
    for slack in slack_buses:
        dist = top.calc_distance_to_bus(net, int(slack), g=graph)
        for bus, d in dist.items():
            if d < best.get(int(bus), math.inf):
                best[int(bus)] = float(d)
    return best


def station_bus_problem(net: pp.pandapowerNet, bus: int, supplied: set[int], *,
                        lv_only: bool = True) -> str | None:
    """Why ``bus`` cannot take a charger (None when it can): not in the network, a
    medium-voltage bus (above ``LV_MAX_KV``; with ``lv_only``), or not supplied."""
    if bus not in net.bus.index:
        return "no such bus in the network"
    if lv_only and float(net.bus.at[bus, "vn_kv"]) > LV_MAX_KV:
        return (f"a {float(net.bus.at[bus, 'vn_kv']):g} kV bus (the transformer's MV side): "
                f"chargers go on the feeder's low-voltage buses (up to {LV_MAX_KV:g} kV)")
    if bus not in supplied:
        return "bus is out of service or not supplied by the external grid"
    return None


def _check_station_buses(
    net: pp.pandapowerNet,
    n_stations: int,
    station_buses: Sequence[int],
    supplied: set[int],
    *,
    lv_only: bool = False,
) -> list[int]:
    buses = list(station_buses)
    if len(buses) != n_stations:
        raise BusMappingError(None, f"{len(buses)} station buses given for n_stations={n_stations}")
    checked: list[int] = []
    for bus in buses:
        if isinstance(bus, bool) or not isinstance(bus, int | np.integer):
            raise BusMappingError(None, f"station bus {bus!r} is not an integer bus index")
        b = int(bus)
        problem = station_bus_problem(net, b, supplied, lv_only=lv_only)
        if problem is not None:
            raise BusMappingError(b, problem)
        checked.append(b)
    return checked
