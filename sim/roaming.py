"""Roaming in the twin: the twin's CSMS as OCPI CPOs and eMSPs whose drivers charge
with their own tokens, over real HTTP on loopback.

Two set-ups (``[roaming]``):

- **One CPO and an eMSP** (``share``): a share of the EVs (drawn from the run's seed)
  belong to drivers of another network: their tokens are issued by an eMSP
  (:class:`~evtwin.csms.ocpi.emsp.EMSP`), not provisioned in the twin's CSMS, which
  runs as a CPO (:class:`~evtwin.csms.ocpi.cpo.CPO`, each site an OCPI Location).
- **Several operators** (``[[roaming.operators]]``): the twin's CSMS is the platform of
  two or more operators (OCPI lets one platform serve several CPOs, each with its own
  party id). Each operator is a CPO for its sites and an eMSP for its drivers (every
  EV belongs to one, by ``drivers_share``); each eMSP registers with every CPO. A
  driver charging at another operator's site roams: that CPO asks the driver's eMSP
  in real time, sends it the session and the CDR, and the eMSP owes that CPO the
  cost. At their own operator's sites drivers are authorized and billed the same way
  (their own eMSP), but nothing is owed between operators.

When the run starts the CPOs and eMSPs go up on loopback ports, the eMSPs register
(credentials handshake with a one-time token A each) and push their tokens; the
core's roaming port sends each Authorize to the CPO of the station (whitelist
``NEVER``: every start is asked about). The KPIs give the roaming sessions (across
networks), their energy, real-time authorizations, what is owed and paid, and the
net settlement between two operators; ``roaming.csv`` has one row per bill
(pseudonymised tokens only), ``settlement.csv`` one per eMSP and CPO.

The OCPI Locations need a place: ``[roaming] latitude``/``longitude``/``country``
(the sites are spread 100 m apart from there). Needs the CSMS in the twin's
process and a transport with OCPP messages (``websocket`` or ``memory``): the
``direct`` transport answers Authorize without waiting for anyone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from evtwin.agents.ev import EV
from evtwin.csms.auth import TokenRecord
from evtwin.csms.config import ServeConfig
from evtwin.csms.ocpi.cpo import CPO
from evtwin.csms.ocpi.emsp import EMSP, EMSPConfig
from evtwin.csms.ocpi.registry import Registry

from .exceptions import ScenarioError
from .scenario import RoamingSettings

__all__ = ["Roaming"]

#: How long the last pushes (CDRs) may take once the run ended, in seconds.
FLUSH_S = 30.0


@dataclass
class _Network:
    """One operator: its CPO's sites, its eMSP's drivers."""

    name: str
    cpo_party_id: str
    emsp_party_id: str
    sites: list[str]
    evs: list[EV]
    cpo: CPO | None = None
    emsp: EMSP | None = None


class _ByStation:
    """The core's roaming port when several CPOs share it: each Authorize goes to
    the CPO of the station it came from."""

    def __init__(self, cpos: list[CPO]) -> None:
        self.cpos = cpos

    def wants(self, id_token: str) -> bool:
        return any(c.wants(id_token) for c in self.cpos)

    async def authorize(self, id_token: str, station_id: str,
                        evse_id: int | None) -> TokenRecord | None:
        for c in self.cpos:
            if c.has_station(station_id):
                return await c.authorize(id_token, station_id, evse_id)
        return None


class Roaming:
    """The roaming drivers of one twin run and, while it runs, its CPOs and eMSPs
    (a companion of the twin: ``start(server)``, ``stop()``)."""

    def __init__(self, twin: Any, settings: RoamingSettings, seed: int) -> None:
        self.twin = twin
        self.s = settings
        evs = list(twin.model.evs)
        draws = np.random.default_rng([seed, 43]).random(len(evs))
        site_names = [site.name for site in twin.sc.sites]
        if settings.operators:
            unknown = sorted({x for o in settings.operators for x in o.sites} - set(site_names))
            missing = sorted(set(site_names) - {x for o in settings.operators for x in o.sites})
            if unknown or missing:
                raise ScenarioError(twin.sc.name, [("roaming.operators", (
                    f"unknown sites {unknown}" if unknown else
                    f"every site needs an operator; none for {missing}"))])
            bounds = np.cumsum([o.drivers_share for o in settings.operators])
            which = np.searchsorted(bounds, draws, side="right").clip(0, len(bounds) - 1)
            self.networks = [_Network(o.name, o.cpo_party_id, o.emsp_party_id, list(o.sites),
                                      [ev for ev, k in zip(evs, which, strict=True) if k == i])
                             for i, o in enumerate(settings.operators)]
        else:
            self.networks = [
                _Network(settings.cpo_name, settings.cpo_party_id, "", site_names, []),
                _Network(settings.emsp_name, "", settings.emsp_party_id, [],
                         [ev for ev, u in zip(evs, draws, strict=True) if u < settings.share])]
        #: The EVs whose tokens an eMSP issued (the CSMS does not provision them).
        self.evs = [ev for n in self.networks for ev in n.evs]
        self.tokens = frozenset(ev.id_token for ev in self.evs)
        self.authorizations = 0
        self.bills = pd.DataFrame()
        self.settlement = pd.DataFrame()

    # -- set-up ---------------------------------------------------------------------------
    def serve_config(self, sites: list[str]) -> ServeConfig:
        """A CPO's view of the twin: its sites (placed from ``[roaming]``) and stations."""
        s = self.s
        placed = []
        for i, site in enumerate(self.twin.sc.sites):
            if site.name in sites:
                placed.append({"name": site.name, "display_name": f"{site.name} (twin)",
                               "address": f"{site.name} 1"[:45], "city": s.city,
                               "country": s.country,
                               "latitude": round(s.latitude + 0.0009 * i, 6),
                               "longitude": s.longitude,
                               "time_zone": self.twin.sc.timezone or "UTC"})
        stations = [{"id": st.station_id, "site": st.site,
                     "evse_max_kw": [e.max_power_w / 1000.0 for e in st.evses.values()],
                     "phases": max(e.phases for e in st.evses.values())}
                    for st in self.twin.model.stations if st.site in sites]
        return ServeConfig.model_validate({
            "sites": placed, "stations": stations,
            "ocpi": {"country_code": s.country_code, "party_id": "XXX", "name": "x",
                     "port": 0}})

    def emsp_config(self, net: _Network) -> EMSPConfig:
        s = self.s
        drivers = [{"id": ev.ev_id, "tokens": [{
            "uid": ev.id_token, "whitelist": s.whitelist,
            "contract_id": f"{s.country_code}-{net.emsp_party_id}-C{n:08d}"}]}
            for n, ev in enumerate(net.evs, start=1)]
        return EMSPConfig.model_validate({
            "emsp": {"country_code": s.country_code, "party_id": net.emsp_party_id,
                     "name": net.name, "port": 0},
            "billing": {"currency": self.twin.sc.prices.currency,
                        "markup_percent": s.markup_percent,
                        "fee_per_session": s.fee_per_session},
            "drivers": drivers})

    async def start(self, server: Any) -> None:
        """Up the CPOs on the twin's CSMS and the eMSPs; register each eMSP with each
        CPO; push the tokens."""
        shared = len([n for n in self.networks if n.cpo_party_id]) > 1
        self._server = server
        try:
            await self._start(server, shared)
        except BaseException:
            await self.stop()  # what started, stopped again
            raise

    async def _start(self, server: Any, shared: bool) -> None:
        for net in self.networks:
            if net.cpo_party_id:
                net.cpo = CPO(server, self.serve_config(net.sites), Registry(":memory:"),
                              country_code=self.s.country_code, party_id=net.cpo_party_id,
                              name=net.name, roaming_port=not shared)
                await net.cpo.start()
            if net.emsp_party_id:
                net.emsp = EMSP(self.emsp_config(net), Registry(":memory:"))
                await net.emsp.start()
        cpos = [n.cpo for n in self.networks if n.cpo is not None]
        if shared:
            server.core.roaming = _ByStation(cpos)
        for net in self.networks:
            if net.emsp is None:
                continue
            for cpo in cpos:
                party = await net.emsp.register_with(cpo.versions_url,
                                                     cpo.registry.add_token_a())
                await net.emsp.push_tokens(party)

    async def stop(self) -> None:
        """Let the last sessions and CDRs reach the eMSPs, keep their bills, stop."""
        core = getattr(getattr(self, "_server", None), "core", None)
        if core is not None and isinstance(core.roaming, _ByStation):
            core.roaming = None  # its CPOs are about to stop
        for net in self.networks:
            if net.cpo is not None:
                await net.cpo.flush(FLUSH_S)
        for net in self.networks:  # and any CDR a push lost, pulled
            if net.emsp is not None:
                for party in net.emsp.registry.parties(role="CPO"):
                    await net.emsp.pull_cdrs(party)
        bills = []
        for net in self.networks:
            if net.emsp is not None:
                self.authorizations += len(net.emsp.registry.execute(
                    "SELECT reference FROM authorizations"))
                for b in net.emsp.bills():
                    b.pop("billed_at", None)  # the wall clock: a seed gives the same files
                    bills.append({"emsp": f"{self.s.country_code}*{net.emsp_party_id}", **b})
                await net.emsp.stop()
                net.emsp.registry.close()
        for net in self.networks:
            if net.cpo is not None:
                await net.cpo.stop()
                net.cpo.registry.close()
        columns = ["emsp", "cdr_key", "driver", "token_uid", "cpo", "session_id",
                   "energy_kwh", "exported_kwh", "cpo_cost", "driver_amount", "currency",
                   "ended_at"]
        self.bills = pd.DataFrame(bills, columns=columns)
        self.bills["roaming"] = pd.Series([self._roams(e, c) for e, c in zip(
            self.bills["emsp"], self.bills["cpo"], strict=True)], dtype=bool,
            index=self.bills.index)
        self.settlement = (self.bills.loc[self.bills["roaming"]]
                           .groupby(["emsp", "cpo"], as_index=False)
                           .agg(sessions=("cdr_key", "size"), energy_kwh=("energy_kwh", "sum"),
                                owed=("cpo_cost", "sum"))
                           .round({"energy_kwh": 4, "owed": 2}))

    def _operator(self, party: str) -> str | None:
        """The operator whose CPO or eMSP ``party`` (``CC*PID``) is."""
        pid = party.split("*")[-1]
        for net in self.networks:
            if pid in (net.cpo_party_id, net.emsp_party_id):
                return net.name
        return None

    def _roams(self, emsp: str, cpo: str) -> bool:
        """A session roams when the driver's eMSP and the CPO are different operators
        (with one CPO and an outside eMSP: always)."""
        if not self.s.operators:
            return True
        return self._operator(emsp) != self._operator(cpo)

    def partners(self) -> list[dict[str, Any]]:
        """The parties registered with the twin's CPOs (for the dashboard)."""
        return [{**p, "cpo": n.name} for n in self.networks if n.cpo is not None
                for p in n.cpo.partners()]

    # -- results --------------------------------------------------------------------------
    def kpis(self) -> dict[str, float]:
        """Roaming drivers and sessions (across networks), their energy, real-time
        authorizations, what the eMSPs owe the CPOs, what the drivers paid for them,
        and with two operators the net settlement (first owes second: positive)."""
        b = self.bills
        r = b.loc[b["roaming"]]
        drivers = r["driver"].nunique() if len(r) else 0
        out = {"roaming_drivers": float(drivers),
               "roaming_sessions": float(len(r)),
               "roaming_authorizations": float(self.authorizations),
               "roaming_energy_kwh": round(float(r["energy_kwh"].sum()), 4) if len(r) else 0.0,
               "roaming_owed_to_cpo": round(float(r["cpo_cost"].sum()), 2) if len(r) else 0.0,
               "roaming_paid_by_drivers": round(float(r["driver_amount"].sum()), 2)
               if len(r) else 0.0}
        out["roaming_emsp_margin"] = round(out["roaming_paid_by_drivers"]
                                           - out["roaming_owed_to_cpo"], 2)
        if self.s.operators:
            out["home_sessions"] = float(len(b) - len(r))
        if len(self.s.operators) == 2:
            first, second = self.networks
            cc = self.s.country_code

            def owed(e: _Network, c: _Network) -> float:
                rows = self.settlement[(self.settlement["emsp"] == f"{cc}*{e.emsp_party_id}")
                                       & (self.settlement["cpo"] == f"{cc}*{c.cpo_party_id}")]
                return float(rows["owed"].sum())

            out["roaming_net_settlement"] = round(owed(first, second) - owed(second, first), 2)
        return out

    def tables(self) -> dict[str, pd.DataFrame]:
        """``roaming``: one row per bill (token pseudonyms only); ``settlement``: what
        each eMSP owes each CPO for roaming sessions."""
        return {"roaming": self.bills, "settlement": self.settlement}
