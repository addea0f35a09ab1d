"""The mesa model of the charging network: EVs, stations, sites.

simpy owns time: the runner's processes call :meth:`ChargingModel.plug_in`
and friends at event times and :meth:`ChargingModel.step` once per control
step. The model's own seeded generator (``model.rng``) makes every draw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import mesa
import numpy as np

from .behaviour import Behaviour, Vehicle, Visit, draw_vehicle, draw_visit, plugs_in
from .ev import EV
from .fleet import Fleet, apply_charge, charge_rows
from .station import Evse, VirtualStation


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """One site: its kind, stations and EVSE sizes, and how its drivers behave."""

    name: str
    kind: str
    stations: int
    evses_per_station: int
    evse_max_kw: float
    phases: int
    behaviour: Behaviour
    ev_count: int
    bidirectional: bool = False
    visitors_from: str | None = None
    """Another site whose EVs also charge here (``visitor_share`` of them), on visits
    drawn from this site's behaviour: commuters who charge at home and at work."""
    visitor_share: float = 0.0
    private: bool = False
    """Each EV has a charger of its own (EVSE ``k mod n`` for the site's ``k``-th EV):
    a household's charger, shared only by the household's EVs. Otherwise any EV
    of the site takes any free EVSE."""


@dataclass(frozen=True, slots=True)
class GivenEV:
    """An EV whose vehicle and visits come from data (a sessions file), not from draws."""

    vehicle: Vehicle
    visits: tuple[Visit, ...]
    tags: tuple[tuple[str, str], ...] = ()
    """Per visit: ``(session id, what was assumed)``, e.g. ``("s17", "capacity,soc")``."""
    charger: tuple[str, int] | None = None
    """``(station id, EVSE id)`` of its own charger at a private site (the file named it)."""


def weekday(t_s: float, start_hour: float, start_weekday: int) -> int:
    """Day of the week (Monday 0) at ``t_s`` seconds after a start at ``start_hour``."""
    return (start_weekday + int((start_hour * 3600.0 + t_s) // 86400.0)) % 7


class ChargingModel(mesa.Model):
    """EV agents and virtual stations at one or more sites."""

    def __init__(self, sites: Sequence[SiteConfig], *, seed: int, duration_s: float,
                 start_hour: float, iso15118_share: float = 0.0, v2g_share: float = 0.0,
                 min_soc: float = 0.2, start_weekday: int = 0,
                 given: Mapping[str, Sequence[GivenEV]] | None = None) -> None:
        super().__init__(rng=np.random.default_rng(seed))
        self.sites = {s.name: s for s in sites}
        given = given or {}
        #: Battery state of every EV, one row each (the EVs' attributes are views).
        self.fleet = Fleet(sum(s.ev_count for s in sites) + sum(map(len, given.values())))
        self.stations: list[VirtualStation] = []
        self.evs: list[EV] = []
        for site in sites:
            for k in range(site.stations):
                st = VirtualStation(self, f"{site.name}-{k + 1:03d}", site.name,
                                    [site.evse_max_kw * 1000.0] * site.evses_per_station,
                                    site.phases)
                self.stations.append(st)
        days = max(1, int(np.ceil(duration_s / 86400.0)))
        # Whether a weekend visit happens comes from its own stream: the share
        # does not reshuffle anyone's weekday visits.
        weekend_rng = np.random.default_rng([seed, 4])
        n = 0
        for site in sites:
            for _ in range(site.ev_count):
                n += 1
                vehicle = draw_vehicle(self.rng)
                visits = [draw_visit(self.rng, site.behaviour, vehicle, d * 86400.0, start_hour,
                                     weekend=weekday(d * 86400.0, start_hour, start_weekday) >= 5)
                          for d in range(days)]
                # Whether the EV plugs in that day (plugin_share, weekend_share).
                u = weekend_rng.random(len(visits))
                visits = [v for v, x in zip(visits, u, strict=True)
                          if v.arrival_s < duration_s and plugs_in(
                              site.behaviour, float(x),
                              weekday(v.arrival_s, start_hour, start_weekday) >= 5)]
                self.evs.append(EV(self, f"EV{n:04d}", site.name, vehicle, visits,
                                   id_token=f"TOKEN{n:04d}"))
        # EVs from data come after the drawn ones and draw nothing from self.rng, so
        # the drawn EVs (and a scenario without sessions) are as before.
        pinned: list[tuple[SiteConfig, tuple[str, int], EV]] = []
        from_data: set[str] = set()
        for site in sites:
            for g in given.get(site.name, ()):
                n += 1
                ev = EV(self, f"EV{n:04d}", site.name, g.vehicle, list(g.visits),
                        id_token=f"TOKEN{n:04d}")
                ev.session_tags = dict(zip(g.visits, g.tags, strict=True))
                self.evs.append(ev)
                from_data.add(ev.ev_id)
                if g.charger is not None:
                    pinned.append((site, g.charger, ev))
        # Visitors (commuters from another site) on streams of their own: the visited
        # site's draws do not move anyone's own visits.
        for index, site in enumerate(sites):
            if site.visitors_from is None or site.visitor_share <= 0.0:
                continue
            rng = np.random.default_rng([seed, 6, index])
            for ev in [e for e in self.evs if e.site == site.visitors_from]:
                visits_here = rng.random() < site.visitor_share
                drawn = [replace(draw_visit(
                    rng, site.behaviour, ev.vehicle, d * 86400.0, start_hour,
                    weekend=weekday(d * 86400.0, start_hour, start_weekday) >= 5),
                    site=site.name) for d in range(days)]
                u = rng.random(len(drawn))
                if not visits_here:
                    continue
                drawn = [v for v, x in zip(drawn, u, strict=True)
                         if v.arrival_s < duration_s and plugs_in(
                             site.behaviour, float(x),
                             weekday(v.arrival_s, start_hour, start_weekday) >= 5)]
                ev.visits = sorted(ev.visits + drawn, key=lambda v: v.arrival_s)
        for site in sites:
            if site.private:
                evses = [(st.station_id, e) for st in self.stations_at(site.name)
                         for e in st.evses]
                drawn_here = [e for e in self.evs
                              if e.site == site.name and e.ev_id not in from_data]
                for k, ev in enumerate(drawn_here):
                    ev.charger = evses[k % len(evses)]
                # EVs from data (one per session or car, times given): each takes the
                # charger that has been free longest when it first arrives, so sessions
                # that did not overlap in the data do not collide here.
                free_at = {c: -np.inf for c in evses}
                for ev in (e for e in self.evs
                           if e.site == site.name and e.ev_id in from_data):
                    first = ev.visits[0].arrival_s if ev.visits else 0.0
                    charger = min(evses, key=lambda c: (free_at[c] > first, free_at[c]))
                    ev.charger = charger
                    free_at[charger] = max((v.departure_s for v in ev.visits), default=first)
        for site, charger, ev in pinned:
            if site.private:  # a shared site's drivers take any free EVSE
                ev.charger = charger
        # Who states their needs comes from its own stream, so changing the
        # share does not reshuffle arrivals and batteries.
        needs_rng = np.random.default_rng([seed, 2])
        for ev in self.evs:
            ev.states_needs = bool(needs_rng.random() < iso15118_share)
        v2g_rng = np.random.default_rng([seed, 3])
        for ev in self.evs:
            capable = bool(v2g_rng.random() < v2g_share)
            ev.min_soc = min_soc
            if capable and self.sites[ev.site].bidirectional:
                # Bidirectional AC: it gives back what its on-board charger takes.
                ev.vehicle = replace(ev.vehicle, bidirectional=True,
                                     max_discharge_kw=ev.vehicle.max_power_kw)

    def stations_at(self, site: str) -> list[VirtualStation]:
        """The stations of one site, in id order."""
        return [s for s in self.stations if s.site == site]

    def step(self, now_s: float = 0.0, step_s: float = 60.0) -> None:
        """Advance every station's EVs over the step ending at ``now_s``.

        Every EV that charges at one limit through its interval is integrated
        in one vector operation over the fleet arrays; an EVSE whose profiles
        change its limit inside the interval, or that feeds back (V2G), is
        integrated piece by piece by its station. Both give the same result.
        """
        batch: list[tuple[VirtualStation, Evse]] = []
        rows: list[int] = []
        limits_kw: list[float] = []
        hours: list[float] = []
        for st in self.stations:
            for evse in st.evses.values():
                limit_kw = st.constant_limit_kw(evse, now_s)
                if limit_kw is None or evse.ev is None:
                    st.advance_evse(evse, now_s)
                    continue
                batch.append((st, evse))
                rows.append(evse.ev.row)
                limits_kw.append(limit_kw)
                hours.append((now_s - evse.last_update_s) / 3600.0)
        if batch:
            at = np.array(rows, dtype=np.intp)
            result = charge_rows(self.fleet, at, np.array(limits_kw), np.array(hours))
            apply_charge(self.fleet, at, result)
            for (st, evse), grid_kwh in zip(batch, result.grid_kwh.tolist(), strict=True):
                st.charged(evse, now_s, grid_kwh)
        for st in self.stations:
            st.close_step(step_s)
