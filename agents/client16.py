"""OCPP 1.6J shell of a virtual station (same station logic, 1.6 messages).

1.6 has no TransactionEvent: a plug-in becomes StatusNotification(Preparing),
Authorize and StartTransaction; samples go in MeterValues with the
transactionId; unplugging is StopTransaction. The CSMS assigns the integer
transactionId, which the station adopts.
"""

from __future__ import annotations

from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint as _ChargePoint16
from ocpp.v16 import call, call_result

from .clientbase import ENERGY, ClientBase, parse_ts, record_profile
from .exceptions import ProfileRejected
from .station import Evse, Profile, VirtualStation


class StationClient16(ClientBase, _ChargePoint16):
    """A virtual station's OCPP 1.6J connection to a CSMS."""

    def __init__(self, station: VirtualStation, connection: Any, **kw: Any) -> None:
        super().__init__(station, connection, **kw)
        self._csms_tx: dict[str, str] = {}  # station's own id -> CSMS transactionId

    async def boot(self) -> None:
        """BootNotification, then the status of every connector."""
        r = await self._send_call(call.BootNotification(
            charge_point_model="evtwin-virtual", charge_point_vendor="evtwin"))
        if r.status != "Accepted":
            raise ConnectionRefusedError(f"{self.id}: BootNotification {r.status}")
        self.heartbeat_interval_s = float(r.interval)
        now = self.now_s()
        for evse in self.station.evses.values():
            await self._status(evse.evse_id, "Available", now)

    async def _status(self, connector_id: int, status: str, at_s: float) -> None:
        await self._send_call(call.StatusNotification(
            connector_id=connector_id, error_code="NoError", status=status,
            timestamp=self._ts(at_s)))

    def _samples(self, evse: Evse, context: str, *, full: bool) -> list[dict[str, Any]]:
        values = [{"value": f"{evse.register_wh:.3f}", "context": context,
                   "measurand": ENERGY, "unit": "Wh"}]
        if full:
            values.append({"value": f"{max(evse.power_now_w, 0.0):.1f}", "context": context,
                           "measurand": "Power.Active.Import", "unit": "W"})
            if evse.ev is not None:
                values.append({"value": f"{evse.ev.soc * 100.0:.2f}", "context": context,
                               "measurand": "SoC", "location": "EV", "unit": "Percent"})
        values.append({"value": f"{self.station.voltage_v:.2f}", "context": context,
                       "measurand": "Voltage", "unit": "V"})
        return values

    async def flush(self, now_s: float, *, sample: bool, aligned: bool, heartbeat: bool) -> None:
        """Send everything due at ``now_s`` and wait for every answer."""
        st = self.station
        await self.flush_events(now_s)
        if sample:
            for evse in st.evses.values():
                tx = evse.transaction_id
                if tx is not None and tx not in st.rejected and tx in self._csms_tx.values():
                    await self._send_call(call.MeterValues(
                        connector_id=evse.evse_id, transaction_id=int(tx),
                        meter_value=[{"timestamp": self._ts(now_s),
                                      "sampled_value": self._samples(evse, "Sample.Periodic",
                                                                     full=True)}]))
        if aligned:
            for evse in st.evses.values():
                if evse.transaction_id is None:
                    await self._send_call(call.MeterValues(
                        connector_id=evse.evse_id, meter_value=[{
                            "timestamp": self._ts(now_s),
                            "sampled_value": self._samples(evse, "Sample.Clock", full=False)}]))
        if heartbeat:
            await self._send_call(call.Heartbeat())

    async def _on_plug(self, evse_id: int, at_s: float, info: dict[str, Any], now_s: float) -> None:
        st = self.station
        local_tx = info["transaction_id"]
        await self._status(evse_id, "Preparing", at_s)
        auth = await self._send_call(call.Authorize(id_tag=info["id_token"]))
        if auth.id_tag_info["status"] != "Accepted":
            st.rejected.add(local_tx)
            return
        r = await self._send_call(call.StartTransaction(
            connector_id=evse_id, id_tag=info["id_token"],
            meter_start=round(info["register_wh"]), timestamp=self._ts(at_s)))
        csms_tx = str(r.transaction_id)
        self._csms_tx[local_tx] = csms_tx
        st.rename_transaction(evse_id, local_tx, csms_tx)
        if r.id_tag_info["status"] == "Accepted":
            await self._status(evse_id, "Charging", at_s)
            st.begin_charging(evse_id, csms_tx, now_s)
        else:
            st.rejected.add(csms_tx)

    async def _on_unplug(self, evse_id: int, at_s: float, info: dict[str, Any]) -> None:
        st = self.station
        tx = info["transaction_id"]
        # The unplug was queued with the CSMS's id if StartTransaction had
        # already been answered, else with the station's own.
        csms_tx = tx if tx in self._csms_tx.values() else self._csms_tx.get(tx)
        if csms_tx is not None and csms_tx not in st.rejected:
            # 1.6 meters are whole Wh: send the register with the rest in
            # transactionData so the CSMS can bill it exactly.
            await self._send_call(call.StopTransaction(
                meter_stop=round(info["register_wh"]), timestamp=self._ts(at_s),
                transaction_id=int(csms_tx), reason="EVDisconnected",
                transaction_data=[{"timestamp": self._ts(at_s), "sampled_value": [{
                    "value": f"{info['register_wh']:.3f}", "context": "Transaction.End",
                    "measurand": ENERGY, "unit": "Wh"}]}]))
        await self._status(evse_id, "Available", at_s)

    # -- CSMS-initiated ------------------------------------------------------
    def _profile(self, cp: dict[str, Any]) -> Profile:
        schedule = cp["charging_schedule"]
        start = schedule.get("start_schedule")
        periods = [(float(p["start_period"]), float(p["limit"]), p.get("number_phases"))
                   for p in schedule["charging_schedule_period"]]
        vf, vt = cp.get("valid_from"), cp.get("valid_to")
        purpose = cp["charging_profile_purpose"]
        tx = cp.get("transaction_id")
        return Profile(
            profile_id=int(cp["charging_profile_id"]),
            purpose="ChargingStationMaxProfile" if purpose == "ChargePointMaxProfile" else purpose,
            stack_level=int(cp["stack_level"]), kind=cp["charging_profile_kind"],
            unit=schedule["charging_rate_unit"], periods=periods,
            start_s=self.to_seconds(parse_ts(start)) if start else None,
            duration_s=schedule.get("duration"),
            transaction_id=str(tx) if tx is not None else None,
            valid_from_s=self.to_seconds(parse_ts(vf)) if vf else None,
            valid_to_s=self.to_seconds(parse_ts(vt)) if vt else None,
            recurrency=cp.get("recurrency_kind"),
        )

    @on("SetChargingProfile")
    def on_set_charging_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any],
                                **_: Any) -> Any:
        self.profiles_received += 1
        self.station.advance_all(self.now_s())  # the old limits hold until now
        profile = self._profile(cs_charging_profiles)
        try:
            self.station.set_profile(connector_id, profile)
        except ProfileRejected:
            record_profile(self.received_profiles, self, connector_id, profile, "Rejected")
            return call_result.SetChargingProfile(status="Rejected")
        record_profile(self.received_profiles, self, connector_id, profile, "Accepted")
        return call_result.SetChargingProfile(status="Accepted")

    @on("ClearChargingProfile")
    def on_clear_charging_profile(self, id: int | None = None, connector_id: int | None = None,
                                  charging_profile_purpose: str | None = None,
                                  stack_level: int | None = None, **_: Any) -> Any:
        self.station.advance_all(self.now_s())
        if charging_profile_purpose == "ChargePointMaxProfile":
            charging_profile_purpose = "ChargingStationMaxProfile"
        removed = self.station.clear_profiles(profile_id=id, evse_id=connector_id,
                                              purpose=charging_profile_purpose,
                                              stack_level=stack_level)
        return call_result.ClearChargingProfile(status="Accepted" if removed else "Unknown")
