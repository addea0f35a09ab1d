"""Roaming in the twin: the twin's CSMS as an OCPI CPO and an eMSP whose customers
charge at its stations with their own tokens, over real HTTP on loopback.

With ``[roaming]`` a share of the EVs (``share``, drawn from the run's seed) belong
to drivers of another network: their tokens are issued by an eMSP
(:class:`~evtwin.csms.ocpi.emsp.EMSP`), not provisioned in the twin's CSMS. When the
run starts, the CSMS's CPO (:class:`~evtwin.csms.ocpi.cpo.CPO`, each site an OCPI
Location) and the eMSP go up on loopback ports, the eMSP registers with the CPO
(credentials handshake with a one-time token A) and pushes its tokens. Each roaming
driver's Authorize is then answered by the eMSP in real time (whitelist ``NEVER``),
their sessions and CDRs are pushed to it, and it bills them. The KPIs give the
roaming sessions, their energy, the settlement (what the eMSP owes the CPO, what its
drivers paid) and ``roaming.csv`` one row per bill.

The OCPI Locations need a place: ``[roaming] latitude``/``longitude``/``country``
(the sites are spread 100 m apart from there). Needs the CSMS in the twin's
process and a transport with OCPP messages (``websocket`` or ``memory``): the
``direct`` transport answers Authorize without waiting for anyone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from evtwin.csms.config import ServeConfig
from evtwin.csms.ocpi.cpo import CPO
from evtwin.csms.ocpi.emsp import EMSP, EMSPConfig, settlement
from evtwin.csms.ocpi.registry import Registry

from .scenario import RoamingSettings

__all__ = ["Roaming"]

#: How long the last pushes (CDRs) may take once the run ended, in seconds.
FLUSH_S = 30.0


class Roaming:
    """The roaming drivers of one twin run and, while it runs, its CPO and eMSP
    (a companion of the twin: ``start(server)``, ``stop()``)."""

    def __init__(self, twin: Any, settings: RoamingSettings, seed: int) -> None:
        self.twin = twin
        self.s = settings
        draws = np.random.default_rng([seed, 43]).random(len(twin.model.evs))
        self.evs = [ev for ev, u in zip(twin.model.evs, draws, strict=True) if u < settings.share]
        #: Id tokens the CSMS must not know: the eMSP's.
        self.tokens = frozenset(ev.id_token for ev in self.evs)
        self.cpo: CPO | None = None
        self.emsp: EMSP | None = None
        self.report: dict[str, Any] | None = None
        #: Real-time authorizations the eMSP answered.
        self.authorizations = 0
        self.bills = pd.DataFrame()

    def serve_config(self) -> ServeConfig:
        """The CPO's view of the twin: its sites (placed from ``[roaming]``) and stations."""
        s = self.s
        model = self.twin.model
        sites = []
        for i, site in enumerate(self.twin.sc.sites):
            sites.append({"name": site.name, "display_name": f"{site.name} (twin)",
                          "address": f"{site.name} 1"[:45], "city": s.city,
                          "country": s.country, "latitude": round(s.latitude + 0.0009 * i, 6),
                          "longitude": s.longitude, "time_zone": self.twin.sc.timezone or "UTC"})
        stations = [{"id": st.station_id, "site": st.site,
                     "evse_max_kw": [e.max_power_w / 1000.0 for e in st.evses.values()],
                     "phases": max(e.phases for e in st.evses.values())}
                    for st in model.stations]
        return ServeConfig.model_validate({
            "sites": sites, "stations": stations,
            "ocpi": {"country_code": s.country_code, "party_id": s.cpo_party_id,
                     "name": s.cpo_name, "port": 0}})

    def emsp_config(self) -> EMSPConfig:
        s = self.s
        drivers = [{"id": ev.ev_id, "tokens": [{
            "uid": ev.id_token, "whitelist": s.whitelist,
            "contract_id": f"{s.country_code}-{s.emsp_party_id}-C{n:08d}"}]}
            for n, ev in enumerate(self.evs, start=1)]
        return EMSPConfig.model_validate({
            "emsp": {"country_code": s.country_code, "party_id": s.emsp_party_id,
                     "name": s.emsp_name, "port": 0},
            "billing": {"currency": self.twin.sc.prices.currency,
                        "markup_percent": s.markup_percent,
                        "fee_per_session": s.fee_per_session},
            "drivers": drivers})

    async def start(self, server: Any) -> None:
        """Up the CPO on the twin's CSMS and the eMSP; register; push the tokens."""
        cpo_registry = Registry(":memory:")
        self.cpo = CPO(server, self.serve_config(), cpo_registry,
                       country_code=self.s.country_code, party_id=self.s.cpo_party_id,
                       name=self.s.cpo_name)
        await self.cpo.start()
        self.emsp = EMSP(self.emsp_config(), Registry(":memory:"))
        await self.emsp.start()
        party = await self.emsp.register_with(self.cpo.versions_url,
                                              cpo_registry.add_token_a())
        await self.emsp.push_tokens(party)

    async def stop(self) -> None:
        """Let the last sessions and CDRs reach the eMSP, keep its settlement, stop."""
        if self.cpo is not None:
            await self.cpo.flush(FLUSH_S)
        if self.emsp is not None:
            self.report = settlement(self.emsp.registry)
            self.authorizations = len(self.emsp.registry.execute(
                "SELECT reference FROM authorizations"))
            # billed_at is the wall clock: left out, so a seed gives the same files.
            self.bills = pd.DataFrame(self.emsp.bills()).drop(columns=["billed_at"],
                                                              errors="ignore")
            await self.emsp.stop()
            self.emsp.registry.close()
        if self.cpo is not None:
            await self.cpo.stop()
            self.cpo.registry.close()

    def kpis(self) -> dict[str, float]:
        """Roaming drivers and sessions, their energy, and the settlement."""
        r = self.report or settlement_empty()
        return {"roaming_drivers": float(len(self.evs)),
                "roaming_sessions": float(r["roaming_sessions"]),
                "roaming_authorizations": float(self.authorizations),
                "roaming_energy_kwh": float(r["energy_kwh"]),
                "roaming_owed_to_cpo": float(r["owed_to_cpos"]),
                "roaming_paid_by_drivers": float(r["paid_by_drivers"]),
                "roaming_emsp_margin": float(r["margin"])}

    def table(self) -> pd.DataFrame:
        """One row per roaming bill: driver (the EV), CPO, energy, the CPO's cost and
        what the driver paid (token uids pseudonymised by the eMSP)."""
        return self.bills


def settlement_empty() -> dict[str, Any]:
    return {"roaming_sessions": 0, "energy_kwh": 0.0, "owed_to_cpos": 0.0,
            "paid_by_drivers": 0.0, "margin": 0.0}
