"""V2G strategies: discharge bidirectional EVs at the feeder's peak, recharge later.

Pure functions of the CSMS's view, like every strategy. A negative limit is a
discharge setpoint; the CSMS sends it as an OCPP 2.1 CentralSetpoint (and
as 0 to a station that speaks an older version). Every driver's minimum SoC
is kept by the station; the strategy also keeps time to recharge what it
borrows before the EV leaves.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

import numpy as np

from .feeder import FeederView, feeder_aware
from .model import ControlView, SessionView
from .strategies import Limits, equal_share, register

#: The transformer loading the peak is shaved to, as a share of its limit.
PEAK_TARGET_FRACTION = 0.5
#: How long a discharge decision holds at most, for the energy it may take (h).
DISCHARGE_HORIZON_H = 0.25
#: Slack on the time needed to recharge before departure.
RECHARGE_MARGIN = 1.5


def _can_lend(s: SessionView, now: datetime) -> float:
    """kW this session may feed back now without endangering its departure energy."""
    if not s.v2x_max_discharge_kw or not s.v2x_spare_kwh or s.departure is None:
        return 0.0
    hours_left = (s.departure - now).total_seconds() / 3600.0
    charge_kw = min(s.max_power_kw, s.ev_max_kw or s.max_power_kw)
    if hours_left <= 0 or charge_kw <= 0:
        return 0.0
    lend_kw = min(s.v2x_max_discharge_kw, s.v2x_spare_kwh / DISCHARGE_HORIZON_H)
    # What it still needs plus what it lends must fit, with margin, in the time left.
    need_kwh = (s.energy_remaining_kwh or 0.0) + lend_kw * DISCHARGE_HORIZON_H
    if need_kwh * RECHARGE_MARGIN > charge_kw * (hours_left - DISCHARGE_HORIZON_H):
        return 0.0
    return lend_kw


@register("v2g_peak_shaving")
def v2g_peak_shaving(view: ControlView) -> Limits:
    """Keep the transformer under a target; at the peak, V2G EVs feed back.

    Charging is allocated by ``feeder_aware`` against a tightened transformer
    limit (``PEAK_TARGET_FRACTION`` of the real one), which moves charging out
    of the peak into the valley. If the transformer is still predicted above
    the target, bidirectional EVs that can spare energy (and have time to
    recharge it before they leave) discharge, the most effective first, until
    the prediction meets the target. Without a feeder model: equal_share.
    """
    feeder = view.feeder
    if not isinstance(feeder, FeederView) or feeder.trafo_loading_percent is None:
        return equal_share(view)
    target = feeder.limits.trafo_loading_max_percent * PEAK_TARGET_FRACTION
    tight = dataclasses.replace(feeder, limits=dataclasses.replace(
        feeder.limits, trafo_loading_max_percent=target))
    limits = feeder_aware(dataclasses.replace(view, feeder=tight))

    column = {sid: i for i, sid in enumerate(feeder.station_ids)}
    sessions = [s for site in view.sites for s in site.sessions if s.station_id in column]
    p_new = np.array(feeder.station_p_kw, dtype=float)
    # Stations' EV power after this cycle: allocated sessions at their limit,
    # others as measured.
    allocated = {s.station_id for s in sessions}
    for sid in allocated:
        p_new[column[sid]] = 0.0
    for s in sessions:
        alloc = limits.get((s.station_id, s.evse_id))
        p_new[column[s.station_id]] += s.power_kw if alloc is None else alloc
    delta = p_new - feeder.station_p_kw
    predicted = feeder.trafo_loading_percent + feeder.dtrafo_dp_percent_per_kw @ delta
    worst = int(np.argmax(predicted))
    excess = float(predicted[worst] - target)
    if excess <= 0:
        return limits

    sens = feeder.dtrafo_dp_percent_per_kw[worst]
    lenders = sorted(((s, _can_lend(s, view.now)) for s in sessions),
                     key=lambda x: -(x[1] * sens[column[x[0].station_id]]))
    for s, lend_kw in lenders:
        if excess <= 0 or lend_kw <= 0:
            break
        key = (s.station_id, s.evse_id)
        k = float(sens[column[s.station_id]])
        if k <= 0:
            continue
        charging = limits.get(key) or 0.0
        # Stopping its charging helps first, then feeding back.
        freed = min(charging, excess / k)
        excess -= freed * k
        feed = min(lend_kw, max(excess, 0.0) / k) if excess > 0 else 0.0
        excess -= feed * k
        limits[key] = charging - freed - feed
    return limits
