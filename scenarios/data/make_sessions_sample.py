"""Write sessions_sample.csv: 300 synthetic charging sessions at a public car park.

Synthetic, written for evtwin's tests and the sessions scenario; not downloaded
and not anyone's measurements. The shapes follow the published ElaadNL
figures for public charging (FIELD-NOTES, "Field data on charging behaviour"):
arrivals bimodal (morning 8-9 h, evening about 18 h), median stay 4.4 h,
median 7.2 kWh per session. A week from Monday 2026-06-01, local time in
Europe/Amsterdam (naive times: the scenario gives the zone); 48 sessions a
weekday, 30 a weekend day. Some rows carry what richer data has: a driver
id (regular users come back), the EV's maximum power, its battery and SoC.

Deterministic: ``python scenarios/data/make_sessions_sample.py`` rewrites the
same file.
"""

from __future__ import annotations

import csv
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("sessions_sample.csv")
START = datetime(2026, 6, 1)  # a Monday, local time
PER_DAY = (48, 48, 48, 48, 48, 30, 30)
REGULARS = 12  # drivers with an id who come back on weekdays


def main() -> None:
    """Write the sample (300 rows)."""
    rng = np.random.default_rng(20260601)
    rows = []
    n = 0
    for day, count in enumerate(PER_DAY):
        regulars = rng.permutation(REGULARS)[: rng.integers(6, REGULARS)] if day < 5 else []
        for i in range(count):
            n += 1
            evening = rng.random() < 0.35
            hour = rng.normal(18.0, 1.5) if evening else rng.normal(8.75, 1.3)
            hour = float(np.clip(hour, 6.0, 22.5))
            stay_h = float(np.clip(4.4 * np.exp(rng.normal(0.0, 0.6)), 0.5, 14.0))
            energy = float(np.clip(7.2 * np.exp(rng.normal(0.0, 0.7)), 1.0, 60.0))
            arrival = START + timedelta(days=day, hours=hour)
            arrival = arrival.replace(second=0, microsecond=0)
            departure = arrival + timedelta(minutes=round(stay_h * 60))
            row = {"session_id": f"S{n:04d}", "arrival": arrival.isoformat(),
                   "departure": departure.isoformat(), "energy_kwh": f"{energy:.2f}",
                   "energy_source": "requested",
                   "station_id": f"NL-PUB-{int(rng.integers(1, 25)):03d}",
                   "max_power_kw": "", "capacity_kwh": "", "soc_arrival": "", "ev_id": ""}
            if i < len(regulars):
                row["ev_id"] = f"driver{int(regulars[i]):02d}"
            if rng.random() < 0.2:  # the station saw what the car drew
                row["max_power_kw"] = str(float(rng.choice([3.7, 7.4, 11.0], p=[.3, .4, .3])))
            if not row["ev_id"] and rng.random() < 0.2:  # ISO 15118: the car said
                capacity = float(rng.choice([58.0, 77.0]))
                soc = float(rng.uniform(0.1, 0.5))
                row["capacity_kwh"] = f"{capacity:.0f}"
                row["soc_arrival"] = f"{min(soc, 0.8 - energy / capacity):.3f}" \
                    if energy / capacity < 0.7 else f"{soc:.3f}"
            rows.append(row)
    with OUT.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
