"""The run's KPIs: what each one means and how it is computed from a run's tables."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .scenario import Scenario

# KPI name -> (label, unit) for tables; order is the table's order.
#: KPIs recorded under an older name (baselines, run records) -> their name now.
RENAMED_KPIS: dict[str, str] = {"energy_unmet_share": "energy_unmet_percent"}


def current_kpi_names(kpis: dict[str, float]) -> dict[str, float]:
    """Recorded KPIs under today's names (an older record's renamed KPIs taken over)."""
    return {RENAMED_KPIS.get(k, k): v for k, v in kpis.items()}


KPI_LABELS: dict[str, tuple[str, str]] = {
    "energy_requested_kwh": ("Energy requested", "kWh"),
    "energy_delivered_kwh": ("Energy delivered (to batteries)", "kWh"),
    "energy_unmet_kwh": ("Energy unmet", "kWh"),
    "energy_unmet_percent": ("Unmet share", "%"),
    "energy_short_at_departure_kwh": ("  of it: short when leaving", "kWh"),
    "energy_turned_away_kwh": ("  of it: drivers turned away", "kWh"),
    # Stations meter net energy (V2G feed-back counts against it); the CSMS bills the
    # import register, so with V2G billed exceeds metered by the energy fed back.
    "energy_metered_kwh": ("Energy metered at stations (net: import - fed back)", "kWh"),
    "energy_billed_kwh": ("Energy billed by CSMS (import only, closed tx)", "kWh"),
    "evs_served": ("EV visits served", ""),
    "evs_open_at_end": ("EV visits still plugged at end", ""),
    "evs_turned_away": ("EV visits turned away", ""),
    "evs_waiting_at_end": ("EV visits waiting for a station at end", ""),
    "evs_rejected": ("EV visits rejected by CSMS", ""),
    "peak_ev_power_kw": ("Peak EV power", "kW"),
    "peak_trafo_loading_percent": ("Peak transformer loading", "%"),
    "peak_line_loading_percent": ("Peak line loading", "%"),
    "v_min_pu": ("Min voltage", "pu"),
    "v_max_pu": ("Max voltage", "pu"),
    "minutes_voltage_violation": ("Minutes outside voltage limits", "min"),
    "minutes_thermal_violation": ("Minutes over thermal limits", "min"),
    "minutes_site_limit_exceeded": ("Minutes over a site limit", "min"),
    "energy_discharged_kwh": ("Energy fed back by V2G (from batteries)", "kWh"),
    "v2g_revenue": ("V2G revenue", "cur"),
    "max_equivalent_full_cycles": ("Max battery cycles in a visit (V2G ageing)", ""),
    "evs_below_min_soc": ("EVs left below their minimum SoC", ""),
    "energy_cost": ("Energy cost at the sites' connections", "cur"),
    "net_energy_cost": ("Net cost (energy cost - V2G revenue)", "cur"),
    "cost_per_kwh_delivered": ("Net cost per kWh delivered", "cur"),
    "pv_energy_kwh": ("PV generation", "kWh"),
    "pv_used_on_site_share": ("PV used at its site", "%"),
    "storage_discharged_kwh": ("Stationary storage discharged", "kWh"),
    "storage_equivalent_full_cycles": ("Stationary storage cycles", ""),
    "peak_site_import_kw": ("Peak import at a site connection", "kW"),
    "vuf_max_percent": ("Max voltage unbalance (unbalanced flow)", "%"),
    "minutes_unbalance_violation": ("Minutes over the unbalance limit", "min"),
    "neutral_current_max_a": ("Max neutral current", "A"),
    "sessions_not_served": ("Sessions from data not served in full", ""),
    "sessions_outside_run": ("Sessions from data outside the run (dropped)", ""),
    # Driver tariff ([tariff], evtwin.sim.tariff_config): only in runs that set one.
    "driver_revenue": ("Driver revenue (what drivers paid, CSMS cost records)", "cur"),
    "idle_fee_revenue": ("  of it: idle fees", "cur"),
    "occupancy_surcharge_revenue": ("  of it: occupancy surcharges", "cur"),
    "driver_revenue_per_kwh": ("Driver revenue per kWh billed", "cur"),
    "driver_cost_per_kwh_mean": ("Mean driver cost per kWh (over sessions)", "cur"),
    "evse_utilisation_percent": ("EVSE utilisation (time plugged / port time)", "%"),
    "sessions_price_shifted": ("Visits shifted for a lower price", ""),
    "sessions_site_switched": ("Visits moved to a cheaper site", ""),
    "sessions_energy_reduced": ("Visits that took less energy for the price", ""),
    "sessions_left_for_idle_fee": ("Visits ended early to avoid the idle fee", ""),
    # [forecast]: the CSMS's day-ahead forecasts and purchases (sim.procurement).
    "forecast_mae_kwh": ("Forecast MAE, energy per site-hour (learned)", "kWh"),
    "forecast_naive_mae_kwh": ("Forecast MAE, energy per site-hour (seasonal naive)", "kWh"),
    "forecast_skill_percent": ("Forecast skill (1 - MAE / naive MAE)", "%"),
    "forecast_pinball_kwh": ("Forecast pinball loss, q 0.1/0.5/0.9 (learned)", "kWh"),
    "forecast_naive_pinball_kwh": ("Forecast pinball loss (seasonal naive)", "kWh"),
    "forecast_arrivals_mae": ("Forecast MAE, arrivals per site-hour (learned)", ""),
    "forecast_naive_arrivals_mae": ("Forecast MAE, arrivals per site-hour (naive)", ""),
    "forecast_peak_mae_kw": ("Forecast MAE, daily site peak (learned)", "kW"),
    "forecast_naive_peak_mae_kw": ("Forecast MAE, daily site peak (naive)", "kW"),
    "day_ahead_energy_kwh": ("Energy bought day-ahead", "kWh"),
    "day_ahead_cost": ("Day-ahead purchase cost", "cur"),
    "imbalance_energy_kwh": ("Imbalance energy (|drawn - bought|)", "kWh"),
    "imbalance_cost": ("Imbalance cost", "cur"),
    "procurement_cost": ("Procurement cost (day-ahead + imbalance)", "cur"),
    "procurement_cost_naive": ("Procurement cost buying the naive forecast", "cur"),
    "pv_forecast_mae_kw": ("PV forecast MAE (hourly, the CSMS's)", "kW"),
    "availability_percent": ("Port availability (network mean)", "%"),
    "availability_min_port_percent": ("  lowest port's availability", "%"),
    "failures": ("Component failures", ""),
    "mtbf_days": ("Mean time between failures (per port, time up)", "d"),
    "mttr_h": ("Mean time to repair (repaired failures)", "h"),
    "outages_open_at_end": ("Failures still unrepaired at end", ""),
    "sessions_lost_to_faults": ("Visits lost to faults (session ended, turned away)", ""),
    "energy_lost_to_faults_kwh": ("  their energy not delivered", "kWh"),
    "visits_rerouted_by_faults": ("Visits that went to another site (a port down)", ""),
    "work_orders": ("Maintenance jobs done", ""),
    "crew_utilisation_percent": ("Crew utilisation (of shift time)", "%"),
    "maintenance_cost": ("Maintenance cost (labour, parts, contract)", "cur"),
    "prediction_precision_percent": ("Failure predictions that were right", "%"),
    "prediction_recall_percent": ("Failures predicted in time", "%"),
    "prediction_lead_time_h": ("Prediction lead time (mean)", "h"),
    "app_users": ("Drivers using the app", ""),
    "app_site_switches": ("  visits they moved to another site", ""),
    "reservations_made": ("Reservations made (accepted by the station)", ""),
    "reservations_honoured": ("  honoured (the driver took the EVSE)", ""),
    "reservations_expired": ("  expired (nobody came in time)", ""),
    "reservations_refused": ("Reservations the station refused", ""),
    "app_no_shows": ("Reserving drivers who did not come", ""),
    "turned_away_percent_app": ("Visits turned away: app users", "%"),
    "turned_away_percent_other": ("Visits turned away: other drivers", "%"),
    "roaming_drivers": ("Drivers who roamed (another network's tokens)", ""),
    "roaming_sessions": ("  their sessions (CDRs sent over OCPI)", ""),
    "roaming_authorizations": ("Real-time authorizations by eMSPs (all sessions)", ""),
    "roaming_energy_kwh": ("  their energy", "kWh"),
    "roaming_owed_to_cpo": ("  owed by the eMSP to the CPO", "cur"),
    "roaming_paid_by_drivers": ("  paid by those drivers to the eMSP", "cur"),
    "roaming_emsp_margin": ("  the eMSPs' margin on them", "cur"),
    "roaming_net_settlement": ("Net roaming settlement, first operator to second", "cur"),
    "home_sessions": ("Sessions on the driver's own network", ""),
    "ocpp_messages": ("OCPP messages exchanged", ""),
    "profiles_received": ("Charging profiles received by stations", ""),
}


#: Significant digits a KPI keeps when it is not a whole number.
SIGNIFICANT_DIGITS = 4


def display_unit(unit: str, currency: str) -> str:
    """A KPI's unit as shown: ``cur`` (the currency placeholder) becomes ``currency``."""
    return currency if unit == "cur" else unit


def format_kpi(value: float, unit: str) -> str:
    """A KPI value for tables, formatted by its magnitude, not its type.

    Whole numbers print whole (``3``, ``15,100``), zero prints ``0``, anything else keeps
    at least :data:`SIGNIFICANT_DIGITS` significant digits without scientific notation
    (``0.28``, ``0.004``, ``0.9879``, ``15,103``); only magnitudes no KPI reaches in
    earnest (below 1e-6, from 1e15) print in scientific notation. ``unit`` is the KPI's
    unit from :data:`KPI_LABELS`: a percentage that is not exactly 0 or 100 gets digits
    until it no longer reads as either (a 99.998 % share is not 100 %, a transformer at
    100.02 % is over its limit).
    """
    if not math.isfinite(value):
        return "n/a" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude < 1e-6 or magnitude >= 1e15:
        return f"{value:.{SIGNIFICANT_DIGITS}g}"
    if value == round(value):
        return f"{round(value):,}"
    decimals = max(0, SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(magnitude)))
    text = _fixed(value, decimals)
    if unit == "%":
        while (abs(float(text.replace(",", ""))) in (0.0, 100.0)
               and abs(value) not in (0.0, 100.0) and decimals < 12):
            decimals += 1
            text = _fixed(value, decimals)
    return text


def _fixed(value: float, decimals: int) -> str:
    """``value`` with ``decimals`` decimals and thousands separators; trailing zeros cut
    where they say nothing (0.28, not 0.2800) and kept where they are digits of a
    rounded value (141.96 is 142.0, not 142, which would read as exact)."""
    text = f"{value:,.{decimals}f}"
    if "." in text:
        short = text.rstrip("0").rstrip(".")
        if math.isclose(float(short.replace(",", "")), value, rel_tol=1e-12, abs_tol=0.0):
            text = short
    return "0" if text in ("-0", "-0.0") else text


def compute_kpis(sc: Scenario, ts: pd.DataFrame, sessions: pd.DataFrame,
                 transactions: list[dict[str, Any]], frames: dict[str, int],
                 storage_cycles: float = 0.0,
                 storage_discharged_kwh: float = 0.0) -> dict[str, float]:
    """The run's KPIs (all deterministic for a scenario and seed).

    ``storage_cycles``: the most equivalent full cycles of any stationary
    battery; ``storage_discharged_kwh``: what all of them gave (grid side).
    """
    g = sc.grid
    step_min = sc.step_s / 60.0
    if sessions.empty:
        sessions = pd.DataFrame(columns=["outcome", "energy_wanted_kwh", "energy_battery_kwh",
                                         "energy_grid_kwh"])
    # A visit skipped because the car was still away on its previous one
    # requested nothing.
    sessions = sessions[sessions["outcome"] != "skipped"]
    requested = float(sessions["energy_wanted_kwh"].sum())
    delivered = float(sessions["energy_battery_kwh"].sum())
    # Interrupted: a failed port ended the session and the driver left with what they had.
    short = sessions[sessions["outcome"].isin(["served", "interrupted"])]
    away = sessions[sessions["outcome"] == "turned_away"]
    # Row k >= 1 is the state at the end of step k; the t = 0 row is the start.
    steps = ts.iloc[1:]
    volt_bad = (steps["vm_min_pu"] < g.v_min_pu) | (steps["vm_max_pu"] > g.v_max_pu)
    thermal_bad = (steps["line_loading_max_percent"] > g.line_loading_max_percent) | (
        steps["trafo_loading_percent"] > g.trafo_loading_max_percent)
    site_bad = np.zeros(len(steps), dtype=bool)
    for s in sc.sites:
        # The limit in force at each step: the site's own, or a grid operator's.
        limit = steps.get(f"site_{s.name}_limit_kw")
        if limit is None:
            limit = pd.Series(s.limit_kw if s.limit_kw is not None else np.nan, index=steps.index)
        over = steps[f"site_{s.name}_kw"] > limit * 1.001 + 1e-9
        site_bad |= over.fillna(False).to_numpy(dtype=bool)
    step_h = sc.step_s / 3600.0
    discharged = float(sessions["discharged_kwh"].sum()) if "discharged_kwh" in sessions else 0.0
    left = sessions[sessions["outcome"].isin(["served", "open"])]
    below_min = 0
    if "min_soc" in left and len(left):
        # V2G must never leave a driver below their floor (nor below where they came in).
        floor = left[["min_soc", "soc_initial"]].min(axis=1)
        below_min = int((left["soc_final"] < floor - 1e-9).sum())
    # Energy is bought and sold at each site's connection point: EV charging
    # plus storage minus the site's PV, netted within the site (one V2G car
    # charging another saves buying, it earns nothing).
    import_kw = np.zeros(len(steps))
    v2g_export_kw = np.zeros(len(steps))
    pv_used_kwh = 0.0
    peak_site_kw = 0.0
    for s in sc.sites:
        net = steps.get(f"site_{s.name}_net_kw", steps[f"site_{s.name}_kw"]).to_numpy()
        exported = steps.get(f"site_{s.name}_export_kw", pd.Series(0.0, index=steps.index))
        import_kw += np.maximum(net, 0.0)
        # What leaves the site up to what its stations fed back is V2G; beyond is PV.
        v2g_export_kw += np.minimum(np.maximum(-net, 0.0), exported.to_numpy())
        peak_site_kw = max(peak_site_kw, float(net.max()) if len(net) else 0.0)
        pv_site = steps.get(f"site_{s.name}_pv_kw")
        if pv_site is not None:
            pv_used_kwh += float(np.minimum(pv_site.to_numpy(), np.maximum(
                pv_site.to_numpy() + net, 0.0)).sum() * step_h)
    cost = float((import_kw * steps["price_per_kwh"].to_numpy()).sum() * step_h)
    export_price = steps.get("export_price_per_kwh",
                             pd.Series(sc.prices.export_per_kwh, index=steps.index))
    revenue = float((v2g_export_kw * export_price.to_numpy()).sum() * step_h)
    site_pv_kwh = sum(float(steps[f"site_{s.name}_pv_kw"].sum()) * step_h for s in sc.sites
                      if f"site_{s.name}_pv_kw" in steps)
    billed = sum((t["energy_wh"] or 0.0) for t in transactions if t["ended_at"]) / 1000.0
    outcome = sessions["outcome"]
    unbalance: dict[str, float] = {}
    if "vuf_max_percent" in ts:  # an unbalanced power flow
        unbalance = {
            "vuf_max_percent": float(ts["vuf_max_percent"].max()),
            "minutes_unbalance_violation": float(
                (steps["vuf_max_percent"] > g.vuf_max_percent).sum() * step_min),
            "neutral_current_max_a": float(ts["neutral_current_max_a"].max()),
        }
    from_data: dict[str, float] = {}
    if "served_in_full" in sessions:  # sessions from a file (see evtwin.sim.sessions)
        given = sessions[sessions["session_id"].notna()]
        from_data["sessions_not_served"] = float((given["served_in_full"] != True).sum())  # noqa: E712
    return unbalance | from_data | {
        "energy_requested_kwh": requested,
        "energy_delivered_kwh": delivered,
        "energy_unmet_kwh": requested - delivered,
        "energy_unmet_percent": 100.0 * (requested - delivered) / requested if requested else 0.0,
        "energy_short_at_departure_kwh": float(
            (short["energy_wanted_kwh"] - short["energy_battery_kwh"]).sum()),
        "energy_turned_away_kwh": float(away["energy_wanted_kwh"].sum()),
        "energy_metered_kwh": float(sessions["energy_grid_kwh"].sum()),
        "energy_billed_kwh": billed,
        "evs_served": float((outcome == "served").sum()),
        "evs_open_at_end": float((outcome == "open").sum()),
        "evs_turned_away": float((outcome == "turned_away").sum()),
        "evs_waiting_at_end": float((outcome == "waiting").sum()),
        "evs_rejected": float((outcome == "rejected").sum()),
        "peak_ev_power_kw": float(ts["ev_kw"].max()),
        "peak_trafo_loading_percent": float(ts["trafo_loading_percent"].max()),
        "peak_line_loading_percent": float(ts["line_loading_max_percent"].max()),
        "v_min_pu": float(ts["vm_min_pu"].min()),
        "v_max_pu": float(ts["vm_max_pu"].max()),
        "minutes_voltage_violation": float(volt_bad.sum() * step_min),
        "minutes_thermal_violation": float(thermal_bad.sum() * step_min),
        "minutes_site_limit_exceeded": float(site_bad.sum() * step_min),
        "energy_discharged_kwh": discharged,
        "v2g_revenue": revenue,
        "max_equivalent_full_cycles": float(
            sessions.get("equivalent_full_cycles", pd.Series([0.0])).max() or 0.0),
        "evs_below_min_soc": float(below_min),
        "energy_cost": cost,
        "net_energy_cost": cost - revenue,
        "cost_per_kwh_delivered": (cost - revenue) / delivered if delivered > 0 else 0.0,
        "pv_energy_kwh": float(steps["pv_kw"].sum() * step_h) if "pv_kw" in steps else 0.0,
        "pv_used_on_site_share": 100.0 * pv_used_kwh / site_pv_kwh if site_pv_kwh > 0 else 0.0,
        "storage_discharged_kwh": storage_discharged_kwh,
        "storage_equivalent_full_cycles": storage_cycles,
        "peak_site_import_kw": peak_site_kw,
        "ocpp_messages": float(frames["in"] + frames["out"]),
    }
