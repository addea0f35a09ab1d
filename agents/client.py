"""OCPP 2.0.1 shell of a virtual station, built on the ``ocpp`` library.

The station logic (:class:`~evtwin.agents.station.VirtualStation`) holds the
state; this class sends what it queued and applies what the CSMS asks. The
runner calls :meth:`StationClient.flush` once per step and awaits it: every
call waits for its CALLRESULT, so after the gather the step's OCPP exchanges
are all answered (the barrier that keeps virtual time honest).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ocpp.routing import on
from ocpp.v21 import ChargePoint as _ChargePoint21
from ocpp.v201 import ChargePoint as _ChargePoint201

from .clientbase import ENERGY, ClientBase, parse_ts, record_profile
from .exceptions import ProfileRejected
from .station import NOMINAL_VOLTAGE_V, Evse, Profile


class _Client201(ClientBase):
    """A virtual station's OCPP 2.0.1 / 2.1 connection to a CSMS."""

    if TYPE_CHECKING:  # provided by the ocpp ChargePoint class later in the MRO
        _call: Any
        _call_result: Any
        _ocpp_version: str

    # -- station-initiated ----------------------------------------------------
    async def boot(self) -> None:
        """BootNotification, then the status of every EVSE."""
        r = await self._send_call(self._call.BootNotification(
            charging_station={"model": "evtwin-virtual", "vendor_name": "evtwin"},
            reason="PowerUp"))
        if r.status != "Accepted":
            raise ConnectionRefusedError(f"{self.id}: BootNotification {r.status}")
        self.heartbeat_interval_s = float(r.interval)
        now = self.now_s()
        for evse in self.station.evses.values():
            await self._status(evse.evse_id, evse.status, now)

    async def _status(self, evse_id: int, status: str, at_s: float) -> None:
        await self._send_call(self._call.StatusNotification(
            timestamp=self._ts(at_s), connector_status=status, evse_id=evse_id, connector_id=1))

    def _samples(self, evse: Evse, context: str, *, full: bool) -> list[dict[str, Any]]:
        values: list[dict[str, Any]] = [{
            "value": round(evse.register_wh, 3), "context": context, "measurand": ENERGY,
            "unit_of_measure": {"unit": "Wh"}}]
        if evse.export_register_wh > 0:
            values.append({"value": round(evse.export_register_wh, 3), "context": context,
                           "measurand": "Energy.Active.Export.Register",
                           "unit_of_measure": {"unit": "Wh"}})
        if full:
            values.append({"value": round(max(evse.power_now_w, 0.0), 1), "context": context,
                           "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "W"}})
            if evse.power_now_w < 0:
                values.append({"value": round(-evse.power_now_w, 1), "context": context,
                               "measurand": "Power.Active.Export",
                               "unit_of_measure": {"unit": "W"}})
            if evse.ev is not None:
                values.append({"value": round(evse.ev.soc * 100.0, 2), "context": context,
                               "measurand": "SoC", "location": "EV",
                               "unit_of_measure": {"unit": "Percent"}})
        values.append({"value": round(self.station.voltage_v, 2), "context": context,
                       "measurand": "Voltage", "unit_of_measure": {"unit": "V"}})
        return values

    def _charging_state(self, evse: Evse, now_s: float) -> str:
        """2.0.1 chargingState: who stopped the power, when it is stopped."""
        if evse.power_now_w != 0:
            return "Charging"
        if self.station.limit_w(evse, now_s) <= 0:
            return "SuspendedEVSE"  # the limit is 0: the station holds the EV back
        return "SuspendedEV"  # the EV takes nothing (full, or its own choice)

    def _begin_samples(self, evse_id: int, register_wh: float) -> list[dict[str, Any]]:
        values: list[dict[str, Any]] = [{
            "value": round(register_wh, 3), "context": "Transaction.Begin",
            "measurand": ENERGY, "unit_of_measure": {"unit": "Wh"}}]
        export = self.station.evses[evse_id].export_register_wh
        if export > 0:
            values.append({"value": round(export, 3), "context": "Transaction.Begin",
                           "measurand": "Energy.Active.Export.Register",
                           "unit_of_measure": {"unit": "Wh"}})
        return values

    async def flush(self, now_s: float, *, sample: bool, aligned: bool, heartbeat: bool) -> None:
        """Send everything due at ``now_s`` and wait for every answer."""
        st = self.station
        await self.flush_events(now_s)
        if sample:
            for evse in st.evses.values():
                if evse.transaction_id is not None and evse.transaction_id not in st.rejected:
                    await self._send_call(self._call.TransactionEvent(
                        event_type="Updated", timestamp=self._ts(now_s),
                        trigger_reason="MeterValuePeriodic",
                        seq_no=st.next_seq_no(evse.evse_id),
                        transaction_info={"transaction_id": evse.transaction_id,
                                          "charging_state": self._charging_state(evse, now_s)},
                        meter_value=[{"timestamp": self._ts(now_s),
                                      "sampled_value": self._samples(evse, "Sample.Periodic",
                                                                     full=True)}]))
        if aligned:
            for evse in st.evses.values():
                if evse.transaction_id is None:
                    await self._send_call(self._call.MeterValues(
                        evse_id=evse.evse_id, meter_value=[{
                            "timestamp": self._ts(now_s),
                            "sampled_value": self._samples(evse, "Sample.Clock", full=False)}]))
        if heartbeat:
            await self._send_call(self._call.Heartbeat())

    async def _on_plug(self, evse_id: int, at_s: float, info: dict[str, Any], now_s: float) -> None:
        st = self.station
        tx_id = info["transaction_id"]
        await self._status(evse_id, "Occupied", at_s)
        token = {"id_token": info["id_token"], "type": "ISO14443"}
        auth = await self._send_call(self._call.Authorize(id_token=token))
        if auth.id_token_info["status"] != "Accepted":
            st.rejected.add(tx_id)
            return
        r = await self._send_call(self._call.TransactionEvent(
            event_type="Started", timestamp=self._ts(at_s), trigger_reason="Authorized",
            seq_no=0, transaction_info={"transaction_id": tx_id, "charging_state": "EVConnected"},
            evse={"id": evse_id, "connector_id": 1}, id_token=token,
            meter_value=[{"timestamp": self._ts(at_s), "sampled_value": self._begin_samples(
                evse_id, info["register_wh"])}]))
        status = (r.id_token_info or {}).get("status", "Accepted")
        if status != "Accepted":
            st.rejected.add(tx_id)
            return
        st.begin_charging(evse_id, tx_id, now_s)
        needs = info.get("needs")
        if needs is not None:
            # ISO 15118 in the EV -> OCPP 2.x: departure time and energy need.
            charging_needs: dict[str, Any] = {
                "requested_energy_transfer": ("AC_three_phase" if needs["phases"] == 3
                                              else "AC_single_phase"),
                "departure_time": self._ts(needs["departure_s"]),
                "ac_charging_parameters": {
                    "energy_amount": round(needs["energy_wh"]),
                    "ev_min_current": 6,
                    "ev_max_current": round(needs["max_current_a"]),
                    "ev_max_voltage": round(NOMINAL_VOLTAGE_V)},
            }
            v2x = needs.get("v2x")
            if v2x is not None and self._ocpp_version == "2.1":
                charging_needs["requested_energy_transfer"] = "AC_BPT"
                charging_needs["v2x_charging_parameters"] = {
                    "ev_min_energy_request": round(v2x["min_energy_wh"]),
                    "ev_target_energy_request": round(v2x["target_energy_wh"]),
                    "ev_max_energy_request": round(v2x["max_energy_wh"]),
                    "target_soc": round(v2x["target_soc_percent"]),
                    "max_charge_power": round(v2x["max_charge_w"]),
                    "max_discharge_power": round(v2x["max_discharge_w"]),
                }
            await self._send_call(self._call.NotifyEVChargingNeeds(
                evse_id=evse_id, charging_needs=charging_needs))

    async def _on_unplug(self, evse_id: int, at_s: float, info: dict[str, Any]) -> None:
        st = self.station
        tx_id = info["transaction_id"]
        if tx_id is not None and tx_id not in st.rejected:
            await self._send_call(self._call.TransactionEvent(
                event_type="Ended", timestamp=self._ts(at_s), trigger_reason="EVDeparted",
                seq_no=info["seq_no"],
                transaction_info={"transaction_id": tx_id, "charging_state": "Idle",
                                  "stopped_reason": "EVDisconnected"},
                evse={"id": evse_id, "connector_id": 1},
                meter_value=[{"timestamp": self._ts(at_s), "sampled_value": [{
                    "value": round(info["register_wh"], 3), "context": "Transaction.End",
                    "measurand": ENERGY, "unit_of_measure": {"unit": "Wh"}}]}]))
        await self._status(evse_id, "Available", at_s)

    # -- CSMS-initiated ---------------------------------------------------------
    def _profile(self, cp: dict[str, Any]) -> Profile:
        schedule = cp["charging_schedule"][0]
        start = schedule.get("start_schedule")
        raw_periods = schedule["charging_schedule_period"]
        # 2.1 periods may carry no limit (a setpoint alone): no cap from them then.
        periods = [(float(p["start_period"]), float(p.get("limit", float("inf"))),
                    p.get("number_phases")) for p in raw_periods]
        setpoints = [p.get("setpoint") for p in raw_periods]
        vf, vt = cp.get("valid_from"), cp.get("valid_to")
        return Profile(
            profile_id=int(cp["id"]), purpose=cp["charging_profile_purpose"],
            stack_level=int(cp["stack_level"]), kind=cp["charging_profile_kind"],
            unit=schedule["charging_rate_unit"], periods=periods,
            start_s=self.to_seconds(parse_ts(start)) if start else None,
            duration_s=schedule.get("duration"), transaction_id=cp.get("transaction_id"),
            valid_from_s=self.to_seconds(parse_ts(vf)) if vf else None,
            valid_to_s=self.to_seconds(parse_ts(vt)) if vt else None,
            recurrency=cp.get("recurrency_kind"),
            setpoints=setpoints if any(sp is not None for sp in setpoints) else None,
        )

    @on("SetChargingProfile")
    def on_set_charging_profile(self, evse_id: int, charging_profile: dict[str, Any],
                                **_: Any) -> Any:
        self.profiles_received += 1
        self.station.advance_all(self.now_s())  # the old limits hold until now
        profile = self._profile(charging_profile)
        try:
            self.station.set_profile(evse_id, profile)
        except ProfileRejected as exc:
            record_profile(self.received_profiles, self, evse_id, profile, "Rejected")
            return self._call_result.SetChargingProfile(
                status="Rejected", status_info={"reason_code": "InvalidValue",
                                                "additional_info": exc.reason[:512]})
        record_profile(self.received_profiles, self, evse_id, profile, "Accepted")
        return self._call_result.SetChargingProfile(status="Accepted")

    @on("ClearChargingProfile")
    def on_clear_charging_profile(self, charging_profile_id: int | None = None,
                                  charging_profile_criteria: dict[str, Any] | None = None,
                                  **_: Any) -> Any:
        self.station.advance_all(self.now_s())
        crit = charging_profile_criteria or {}
        removed = self.station.clear_profiles(
            profile_id=charging_profile_id, evse_id=crit.get("evse_id"),
            purpose=crit.get("charging_profile_purpose"), stack_level=crit.get("stack_level"))
        return self._call_result.ClearChargingProfile(status="Accepted" if removed else "Unknown")


class StationClient201(_Client201, _ChargePoint201):
    """Virtual station speaking OCPP 2.0.1."""


class StationClient21(_Client201, _ChargePoint21):
    """Virtual station speaking OCPP 2.1 (the same messages as 2.0.1 here)."""


StationClient = StationClient201

__all__ = ["NOMINAL_VOLTAGE_V", "StationClient", "StationClient21", "StationClient201"]
