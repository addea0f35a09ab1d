"""Stations that fail and the crews that repair them, on the twin's simpy clock.

Each component of each station lives on its own seeded stream
(:mod:`evtwin.agents.faults`): symptoms first for most failures (warnings the
station reports over OCPP, a derated output, lost heartbeats), then the failure
(Faulted, sessions ended with an error, a station gone silent). The CSMS turns
what it hears into work orders (:mod:`evtwin.csms.health`); a dispatcher here
takes them every few minutes and sends a crew:

- in-house crews are a :class:`simpy.PriorityResource` (failures before
  predicted or preventive jobs) working day shifts in local time, driving
  ``travel_min`` to each site, taking a spare part from the van stock
  (:class:`simpy.Container`, reordered on use) and spending the component's
  repair time on site;
- an outsourced contract sends a technician within its response-time promise,
  at any hour, for a call-out fee plus hours on site.

The crew's report closes the work order in the CSMS. Availability, MTBF, MTTR,
sessions and energy lost to faults, crew utilisation and maintenance cost come
out as KPIs; per port in ``availability.csv`` and per job in ``work_orders.csv``.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import simpy

from evtwin.agents.faults import DEFAULT_MODELS, ComponentModel, Unit, build_plan, warning_times
from evtwin.csms.health import StationHealth, WorkOrder, precision_recall

from .operations_config import Faults, Maintenance

#: How often the dispatcher looks at the CSMS's new work orders (s; assumption: a
#: dispatcher's ticket queue refreshed every five minutes).
POLL_S = 300.0
#: A preventive visit's inspection on top of any part it swaps (h; assumption).
INSPECTION_H = 0.5


def component_models(faults: Faults) -> dict[str, ComponentModel]:
    """The scenario's component models: the defaults with its overrides."""
    out: dict[str, ComponentModel] = {}
    for name in faults.components:
        override = getattr(faults, name).model_dump(exclude_none=True)
        out[name] = replace(DEFAULT_MODELS[name], **override)
    return out


@dataclass(slots=True)
class Outage:
    """A component down from ``start_s`` until ``end_s`` (None: still at the end)."""

    station_id: str
    evse_id: int  # 0: the station (all its EVSEs)
    component: str
    start_s: float
    end_s: float | None = None


class Operations:
    """Faults and maintenance of one twin run (see the module docstring)."""

    def __init__(self, twin: Any, faults: Faults, maintenance: Maintenance | None) -> None:
        """``twin``: the :class:`~evtwin.sim.runner.Twin` whose clock, stations and
        EVSE pools this runs on (it calls back ``evses_down``/``evses_up``)."""
        self.twin = twin
        self.env: simpy.Environment = twin.env
        self.settings = maintenance
        sc = twin.sc
        self.plan = build_plan([(st.station_id, len(st.evses)) for st in twin.model.stations],
                               component_models(faults), seed=sc.seed)
        # Contractors' response times (the parts' own draws: FaultPlan.stream).
        self.repair_rng = np.random.default_rng([sc.seed, 33])
        self.units: dict[tuple[str, int, str], Unit] = {
            (u.station_id, u.evse_id, u.model.component_2x): u for u in self.plan.units}
        self.outages: list[Outage] = []
        self._open_outage: dict[tuple[str, int, str], Outage] = {}
        #: Failures as they happened (truth), and the ones a swap prevented (would-be times).
        self.failures: list[tuple[tuple[str, int, str], float]] = []
        self.prevented: list[tuple[tuple[str, int, str], float]] = []
        self.jobs: list[dict[str, Any]] = []
        self.busy_s = 0.0
        self.cost = {"labour": 0.0, "parts": 0.0, "contract": 0.0}
        self.crews: simpy.PriorityResource | None = None
        self.spares: dict[str, simpy.Container] = {}
        self._ordered: dict[str, int] = {}
        self.health: StationHealth | None = None

    # ------------------------------------------------------------------ start
    def start(self, health: StationHealth | None) -> None:
        """Start every component's life; with maintenance, the dispatcher and crews."""
        self.health = health
        end = self.twin.sc.duration_s
        for unit in self.plan.units:
            self.env.process(self._life(unit, unit.generation))
            for t in warning_times(self.plan.stream(unit, 3), unit.model.background_per_day,
                                   0.0, end):
                self.env.process(self._warning_at(unit, t, None))
        m = self.settings
        if m is None or m.policy == "none" or health is None:
            return
        if m.crew == "in_house":
            self.crews = simpy.PriorityResource(self.env, capacity=m.crews)
        for name in DEFAULT_MODELS:
            self.spares[name] = simpy.Container(self.env, init=m.spares.stock,
                                                capacity=max(m.spares.stock, 1) * 1000)
        self.env.process(self._dispatcher())
        if m.policy == "preventive":
            self.env.process(self._preventive())

    # ------------------------------------------------------------------ components
    def _station(self, unit: Unit) -> Any:
        return self.twin.station_by_id[unit.station_id]

    def _life(self, unit: Unit, gen: int) -> Generator[simpy.Event, Any, None]:
        env = self.env
        m = unit.model
        end = self.twin.sc.duration_s
        if unit.symptoms_from_s < min(unit.fails_at_s, end):
            yield env.timeout(max(unit.symptoms_from_s - env.now, 0.0))
            if unit.generation != gen:
                return
            st = self._station(unit)
            if m.derate_share < 1.0 and unit.evse_id:
                st.set_derate(unit.evse_id, m.derate_share, env.now)
            if m.name == "communication":
                st.drop_heartbeat = 0.5  # assumption: half the heartbeats lost
            for t in warning_times(self.plan.stream(unit, 1), m.warning_rate_per_day,
                                   env.now, min(unit.fails_at_s, end)):
                env.process(self._warning_at(unit, t, gen))
        if unit.fails_at_s >= end:
            return
        yield env.timeout(max(unit.fails_at_s - env.now, 0.0))
        if unit.generation != gen:
            return
        self._fail(unit)

    def _warning_at(self, unit: Unit, t_s: float, gen: int | None
                    ) -> Generator[simpy.Event, Any, None]:
        yield self.env.timeout(max(t_s - self.env.now, 0.0))
        if gen is not None and unit.generation != gen:
            return
        if unit.failed:
            return
        self._station(unit).warn(unit.evse_id, unit.model.component_2x,
                                 unit.model.error_code_16, self.env.now)

    def _fail(self, unit: Unit) -> None:
        m = unit.model
        now = self.env.now
        unit.failed = True
        unit.failures += 1
        key = (unit.station_id, unit.evse_id, m.component_2x)
        self.failures.append((key, now))
        outage = Outage(unit.station_id, unit.evse_id, m.component_2x, now)
        self.outages.append(outage)
        self._open_outage[key] = outage
        st = self._station(unit)
        ended = st.fail(unit.evse_id, m.component_2x, m.error_code_16, m.stop_reason, now,
                        offline=m.name == "communication")
        evses = [unit.evse_id] if unit.evse_id else list(st.evses)
        self.twin.evses_down(unit.station_id, evses, ended)

    def _restore(self, unit: Unit) -> None:
        """The part was repaired or swapped now: a new life; the EVSEs work again."""
        m = unit.model
        now = self.env.now
        key = (unit.station_id, unit.evse_id, m.component_2x)
        st = self._station(unit)
        if unit.failed:
            outage = self._open_outage.pop(key)
            outage.end_s = now
            st.repair(unit.evse_id, m.component_2x, m.error_code_16, now,
                      online=m.name == "communication")
            evses = [unit.evse_id] if unit.evse_id else list(st.evses)
            self.twin.evses_up(unit.station_id, evses)
        else:
            if unit.fails_at_s < self.twin.sc.duration_s + 30 * 86400.0:
                self.prevented.append((key, unit.fails_at_s))
            if unit.evse_id:
                st.set_derate(unit.evse_id, 1.0, now)
            if m.name == "communication":
                st.drop_heartbeat = 0.0
        self.plan.renew(unit, now)
        self.env.process(self._life(unit, unit.generation))

    # ------------------------------------------------------------------ crews
    def _dispatcher(self) -> Generator[simpy.Event, Any, None]:
        assert self.health is not None
        while True:
            self.health.tick()
            for order in self.health.new_orders():
                self.env.process(self._job(order))
            yield self.env.timeout(POLL_S)

    def _preventive(self) -> Generator[simpy.Event, Any, None]:
        """Visit every station every ``preventive_every_days``, spread over the period."""
        assert self.health is not None and self.settings is not None
        period_s = self.settings.preventive_every_days * 86400.0
        stations = [st.station_id for st in self.twin.model.stations]
        gap = period_s / max(len(stations), 1)
        k = 0
        while True:
            yield self.env.timeout(gap)
            self.health.raise_preventive(stations[k % len(stations)], 0, "ChargingStation")
            k += 1

    def _local(self, t_s: float) -> datetime:
        return self.twin.to_datetime(t_s).astimezone(self.twin.sc.local_zone())

    def _until_shift(self, t_s: float) -> float:
        """Seconds from ``t_s`` until an in-house shift is on (0 within one)."""
        m = self.settings
        assert m is not None
        local = self._local(t_s)
        for day in range(8):
            d0 = (local + timedelta(days=day)).replace(hour=0, minute=0, second=0, microsecond=0)
            if not m.weekends and d0.weekday() >= 5:
                continue
            start = d0 + timedelta(hours=m.shift_start_h)
            stop = d0 + timedelta(hours=m.shift_end_h)
            if local < stop:
                return max((start - local).total_seconds(), 0.0)
        return 0.0

    def _units_for(self, order: WorkOrder) -> list[Unit]:
        """The parts a job looks at (a preventive visit: the whole station)."""
        if order.reason == "preventive":
            return [u for u in self.plan.units if u.station_id == order.station_id]
        unit = self.units.get((order.station_id, order.evse_id, order.component))
        return [] if unit is None else [unit]

    def _job(self, order: WorkOrder) -> Generator[simpy.Event, Any, None]:
        m = self.settings
        assert m is not None and self.health is not None
        env = self.env
        raised_s = env.now
        urgent = order.reason in ("fault", "offline")
        # The part comes first (from the van stock, or the next delivery): a crew does
        # not wait on site for one.
        reserved: str | None = None
        units = self._units_for(order)
        if order.reason != "preventive" and units:
            reserved = units[0].model.name
            yield from self._take_part(reserved)
        request = None
        if m.crew == "in_house":
            assert self.crews is not None
            request = self.crews.request(priority=0 if urgent else 1)
            yield request
            wait = self._until_shift(env.now)
            if wait > 0:
                yield env.timeout(wait)
            travel_s = m.travel_min * 60.0
        else:
            # assumption: the contractor arrives anywhere within its promise.
            travel_s = m.contract.response_h * 3600.0 * float(self.repair_rng.uniform(0.5, 1.0))
        busy0 = env.now
        yield env.timeout(travel_s)
        arrived_s = env.now
        on_site_h = INSPECTION_H if order.reason == "preventive" else 0.0
        swapped: list[str] = []
        for unit in units:
            um = unit.model
            if unit.in_service:
                continue  # another crew is on it
            in_symptoms = unit.symptoms_from_s <= env.now
            worn = (env.now - unit.installed_s) / 86400.0 > m.replace_after_days
            if unit.failed:
                hours = self.plan.repair_hours(unit)
            elif order.reason == "predicted" or (order.reason == "preventive" and (
                    in_symptoms or (worn and um.shape > 1.0))):
                hours = um.service_h
            else:
                continue  # nothing to do on this part
            if reserved == um.name:
                reserved = None  # the part brought for it
            elif self.spares[um.name].level >= 1:
                yield from self._take_part(um.name)
            else:
                continue  # a preventive swap without a part on hand waits for the next visit
            unit.in_service = True
            yield env.timeout(hours * 3600.0)
            unit.in_service = False
            on_site_h += hours
            self.cost["parts"] += m.part_cost.get(um.name, 0.0)
            swapped.append(um.name)
            self._restore(unit)
        if reserved is not None:
            yield self.spares[reserved].put(1)  # not needed after all: back in the van
        if on_site_h > 0 and not swapped:
            yield env.timeout(on_site_h * 3600.0)
        if m.crew == "in_house":
            assert self.crews is not None and request is not None
            self.crews.release(request)
            self.busy_s += env.now - busy0
            self.cost["labour"] += (env.now - busy0) / 3600.0 * m.hourly_cost
        else:
            self.cost["contract"] += m.contract.callout_cost + max(
                on_site_h, 0.25) * m.contract.hourly_cost
        self.health.complete(order.order_id, renewed=bool(swapped))
        self.jobs.append({
            "order_id": order.order_id, "station_id": order.station_id,
            "evse_id": order.evse_id, "component": order.component, "reason": order.reason,
            "risk": order.risk, "raised_s": raised_s, "arrived_s": arrived_s,
            "done_s": env.now, "parts": ";".join(swapped)})

    def _take_part(self, name: str) -> Generator[simpy.Event, Any, None]:
        """One part from the stock (waiting for a delivery if none), reordered at once."""
        stock = self.spares[name]
        if stock.level + self._ordered.get(name, 0) < 1:
            self.env.process(self._reorder(name))  # none on hand or on its way
        yield stock.get(1)
        self.env.process(self._reorder(name))  # replace what was taken

    def _reorder(self, name: str) -> Generator[simpy.Event, Any, None]:
        assert self.settings is not None
        self._ordered[name] = self._ordered.get(name, 0) + 1
        yield self.env.timeout(self.settings.spares.reorder_days * 86400.0)
        self._ordered[name] -= 1
        stock = self.spares[name]
        # Up to the stock kept (a part brought back unused made one delivery spare),
        # and always one when a job waits for it.
        if stock.level < max(self.settings.spares.stock, 1) or stock.get_queue:
            yield stock.put(1)

    # ------------------------------------------------------------------ results
    def port_table(self, end_s: float) -> pd.DataFrame:
        """Per port: downtime, availability and failures over ``[0, end_s]``."""
        rows = []
        for st in self.twin.model.stations:
            for e in st.evses:
                spans = sorted((o.start_s, min(o.end_s if o.end_s is not None else end_s, end_s))
                               for o in self.outages
                               if o.station_id == st.station_id and o.evse_id in (0, e))
                down = _union_s(spans)
                failures = sum(1 for o in self.outages
                               if o.station_id == st.station_id and o.evse_id in (0, e))
                rows.append({"station_id": st.station_id, "evse_id": e, "site": st.site,
                             "failures": failures, "downtime_h": down / 3600.0,
                             "availability_percent": 100.0 * (1.0 - down / end_s)
                             if end_s > 0 else 100.0})
        return pd.DataFrame(rows)

    def availability_by_day(self, end_s: float) -> list[float]:
        """Network availability (%) per day of the run."""
        out = []
        n_ports = sum(len(st.evses) for st in self.twin.model.stations)
        for d0 in np.arange(0.0, end_s, 86400.0):
            d1 = min(d0 + 86400.0, end_s)
            down = 0.0
            for st in self.twin.model.stations:
                for e in st.evses:
                    spans = [(max(o.start_s, d0), min(o.end_s if o.end_s is not None else d1, d1))
                             for o in self.outages
                             if o.station_id == st.station_id and o.evse_id in (0, e)]
                    down += _union_s(sorted(s for s in spans if s[1] > s[0]))
            out.append(100.0 * (1.0 - down / ((d1 - d0) * n_ports)))
        return out

    def kpis(self, end_s: float, sessions: pd.DataFrame) -> dict[str, float]:
        ports = self.port_table(end_s)
        repaired = [o.end_s - o.start_s for o in self.outages if o.end_s is not None]
        # Per port: its time up over the failures that took it down (a station-wide
        # failure is one for each of its ports).
        up_days = (len(ports) * end_s - ports["downtime_h"].sum() * 3600.0) / 86400.0 \
            if len(ports) else 0.0
        port_failures = float(ports["failures"].sum()) if len(ports) else 0.0
        failures = len(self.outages)
        fault = sessions["fault"].fillna("") if "fault" in sessions else pd.Series(
            "", index=sessions.index)
        lost = sessions[fault.isin(["interrupted", "turned_away"])]
        out = {
            "availability_percent": float(ports["availability_percent"].mean())
            if len(ports) else 100.0,
            "availability_min_port_percent": float(ports["availability_percent"].min())
            if len(ports) else 100.0,
            "failures": float(failures),
            "mtbf_days": up_days / port_failures if port_failures else math.nan,
            "mttr_h": float(np.mean(repaired)) / 3600.0 if repaired else math.nan,
            "outages_open_at_end": float(sum(1 for o in self.outages if o.end_s is None)),
            "sessions_lost_to_faults": float(len(lost)),
            "visits_rerouted_by_faults": float((fault == "rerouted").sum()),
            "energy_lost_to_faults_kwh": float(
                (lost["energy_wanted_kwh"] - lost["energy_battery_kwh"]).clip(lower=0).sum())
            if len(lost) else 0.0,
        }
        m = self.settings
        if m is not None and m.policy != "none" and self.health is not None:
            months = end_s / (30.0 * 86400.0)
            if m.crew == "contract":
                self.cost["contract"] += (m.contract.monthly_fee_per_station * months
                                          * len(self.twin.model.stations))
            shift_s = self._shift_seconds(end_s) * m.crews
            out |= {
                "work_orders": float(len(self.jobs)),
                "crew_utilisation_percent": 100.0 * self.busy_s / shift_s
                if m.crew == "in_house" and shift_s > 0 else math.nan,
                "maintenance_cost": float(sum(self.cost.values())),
            }
            predicted = [((j["station_id"], j["evse_id"], j["component"]), j["raised_s"])
                         for j in self.jobs if j["reason"] == "predicted"]
            if m.policy == "predictive":
                truth = self.failures + self.prevented
                scores = precision_recall(
                    [(k, self._dt(t)) for k, t in predicted],
                    [(k, self._dt(t)) for k, t in truth], m.horizon_days)
                out |= {"prediction_precision_percent": scores["precision_percent"],
                        "prediction_recall_percent": scores["recall_percent"],
                        "prediction_lead_time_h": scores["lead_time_h"]}
        return out

    def _dt(self, t_s: float) -> datetime:
        return self.twin.to_datetime(t_s)

    def _shift_seconds(self, end_s: float) -> float:
        m = self.settings
        assert m is not None
        total = 0.0
        for d0 in np.arange(0.0, end_s, 86400.0):
            local = self._local(float(d0))
            if not m.weekends and local.weekday() >= 5:
                continue
            total += (m.shift_end_h - m.shift_start_h) * 3600.0
        return total

    def work_order_table(self) -> pd.DataFrame:
        cols = ["order_id", "station_id", "evse_id", "component", "reason", "risk",
                "raised_s", "arrived_s", "done_s", "parts"]
        return pd.DataFrame(self.jobs, columns=cols)


def _union_s(spans: list[tuple[float, float]]) -> float:
    """Total length of the union of sorted intervals."""
    total = 0.0
    cur_a = cur_b = None
    for a, b in spans:
        if b <= a:
            continue
        if cur_b is None or a > cur_b:
            if cur_b is not None and cur_a is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_a is not None and cur_b is not None:
        total += cur_b - cur_a
    return total


__all__ = ["Operations", "Outage", "component_models"]

