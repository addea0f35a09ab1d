"""The CSMS's view of its stations' health: problems, outages, work orders, predictions.

What the CSMS learns over OCPP (2.x NotifyEvent on a component's ``Problem``
variable, 1.6 StatusNotification error codes, Faulted statuses, heartbeats that
stop) becomes work orders for the maintenance crews:

- ``fault``: a component reported a failure (reactive maintenance);
- ``offline``: a station has been silent for ``offline_after_heartbeats``
  heartbeat intervals (its communication has failed: it cannot say so itself);
- ``predicted``: the failure model, trained on this CSMS's own history (the
  problems and failures it recorded, :meth:`StationHealth.training_table`),
  gives a component a risk above its threshold (predictive maintenance).

Components are named as OCPP 2.x's standardized device model names them
(``PowerContactor``, ``ConnectorPlugRetentionLock``, ``DataLink``,
``TokenReader``); a 1.6 error code is mapped onto them. Crews report work done
with :meth:`StationHealth.complete`. Nothing here does I/O.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

log = logging.getLogger("evtwin.csms.health")

#: Components the CSMS tracks per EVSE and per station (OCPP 2.x device model names).
EVSE_COMPONENTS: tuple[str, ...] = ("PowerContactor", "ConnectorPlugRetentionLock")
STATION_COMPONENTS: tuple[str, ...] = ("DataLink", "TokenReader")
#: OCPP 1.6 ChargePointErrorCode -> the component it points at.
COMPONENT_OF_CODE_16: dict[str, str] = {
    "HighTemperature": "PowerContactor", "PowerSwitchFailure": "PowerContactor",
    "OverCurrentFailure": "PowerContactor", "ConnectorLockFailure": "ConnectorPlugRetentionLock",
    "WeakSignal": "DataLink", "ReaderFailure": "TokenReader",
}
#: Features of a component at a scoring time, in the model's column order.
FEATURES: tuple[str, ...] = ("warnings_1d", "warnings_3d", "warnings_7d",
                             "heartbeat_gaps_3d", "days_since_renewed")

Key = tuple[str, int, str]  # station id, EVSE id (0: the station), component


@dataclass(slots=True)
class WorkOrder:
    """A job for a crew: look at ``component`` of a station (``evse_id`` 0: the station)."""

    order_id: int
    station_id: str
    evse_id: int
    component: str
    reason: str  # fault | offline | predicted | preventive
    raised_at: datetime
    risk: float | None = None
    done_at: datetime | None = None


@dataclass(slots=True)
class FailureModel:
    """A fitted classifier of 'fails within ``horizon_days``' and its decision threshold."""

    classifier: Any
    threshold: float
    horizon_days: float
    trained_rows: int
    trained_failures: int

    def risk(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.classifier.predict_proba(x)[:, 1], dtype=float)


@dataclass(slots=True)
class StationHealth:
    """See the module docstring. ``stations``: station id -> its EVSE ids."""

    stations: dict[str, tuple[int, ...]]
    heartbeat_interval_s: float
    clock: Callable[[], datetime]
    #: assumption: two missed heartbeats can be a network blip; the third is an outage.
    offline_after_heartbeats: float = 2.5
    model: FailureModel | None = None
    #: assumption: four scorings a day (a night shift of data before the day shift).
    score_every_s: float = 21600.0
    orders: list[WorkOrder] = field(default_factory=list)
    _handed_out: int = 0
    _last_seen: dict[str, datetime] = field(default_factory=dict)
    _heartbeats: dict[str, list[datetime]] = field(default_factory=lambda: defaultdict(list))
    _warnings: dict[Key, list[datetime]] = field(default_factory=lambda: defaultdict(list))
    _failures: dict[Key, list[datetime]] = field(default_factory=lambda: defaultdict(list))
    _renewals: dict[Key, list[datetime]] = field(default_factory=dict)
    _open: dict[Key, WorkOrder] = field(default_factory=dict)
    _started: datetime | None = None
    _next_score: datetime | None = None

    # ------------------------------------------------------------------ telemetry
    def keys(self) -> list[Key]:
        """Every component the CSMS tracks, in a fixed order."""
        out: list[Key] = []
        for sid, evses in sorted(self.stations.items()):
            out += [(sid, e, c) for e in evses for c in EVSE_COMPONENTS]
            out += [(sid, 0, c) for c in STATION_COMPONENTS]
        return out

    @staticmethod
    def key(station_id: str, evse_id: int, component: str) -> Key:
        """The tracked key of a report: station-wide components on EVSE 0."""
        return (station_id, 0 if component in STATION_COMPONENTS else evse_id, component)

    def seen(self, station_id: str, heartbeat: bool = False) -> None:
        """Anything came from the station now (a heartbeat counts for the gap feature)."""
        now = self.clock()
        self._last_seen[station_id] = now
        if self._started is None:
            self._started = now
        if heartbeat:
            self._heartbeats[station_id].append(now)

    def on_problem(self, station_id: str, evse_id: int, component: str, code: str,
                   severity: str, at: datetime) -> WorkOrder | None:
        """A problem report (see :class:`~evtwin.ocppj.domain.ProblemReport`): warnings
        are counted, a failure raises a work order, a clearing is noted."""
        if component not in EVSE_COMPONENTS + STATION_COMPONENTS:
            component = COMPONENT_OF_CODE_16.get(code, component)
        if component not in EVSE_COMPONENTS + STATION_COMPONENTS:
            log.info("%s: problem %s on a component not tracked (%r)", station_id, code,
                     component)
            return None
        k = self.key(station_id, evse_id, component)
        if severity == "warning":
            bisect.insort(self._warnings[k], at)
            return None
        if severity == "cleared":
            return None
        failures = self._failures[k]
        if at not in failures:  # in the history even when it comes late
            bisect.insort(failures, at)
        renewals = self._renewals.get(k, [])
        if renewals and at <= renewals[-1]:
            return None  # reported late (the station was offline): already repaired
        return self._raise(k, "fault", None)

    def _raise(self, k: Key, reason: str, risk: float | None) -> WorkOrder | None:
        existing = self._open.get(k)
        if existing is not None:
            if reason in ("fault", "offline") and existing.reason in ("predicted", "preventive"):
                existing.reason = reason  # now urgent
            return None
        order = WorkOrder(len(self.orders) + 1, k[0], k[1], k[2], reason, self.clock(), risk)
        self.orders.append(order)
        self._open[k] = order
        log.info("work order %d: %s %s EVSE %d (%s)", order.order_id, k[0], k[2], k[1], reason,
                 extra={"event": "work_order", "station": k[0], "reason": reason})
        return order

    def raise_preventive(self, station_id: str, evse_id: int, component: str) -> WorkOrder | None:
        """The operator's maintenance plan schedules a visit (preventive maintenance)."""
        return self._raise(self.key(station_id, evse_id, component), "preventive", None)

    def new_orders(self) -> list[WorkOrder]:
        """Work orders raised since the last call (for dispatch)."""
        out = self.orders[self._handed_out:]
        self._handed_out = len(self.orders)
        return out

    def complete(self, order_id: int, renewed: bool = True) -> None:
        """A crew finished the order now; ``renewed``: the component was repaired or swapped."""
        order = self.orders[order_id - 1]
        now = self.clock()
        order.done_at = now
        k = (order.station_id, order.evse_id, order.component)
        if self._open.get(k) is order:
            del self._open[k]
        if renewed:
            self._renewals.setdefault(k, []).append(now)
            if order.reason == "offline":
                # The station said nothing: its failure is known from when it went
                # silent (its own report, once it is back, gives the exact time).
                last = self._last_seen.get(order.station_id, order.raised_at)
                fails = self._failures[k]
                if not any(abs((t - last).total_seconds()) <= 3 * self.heartbeat_interval_s
                           for t in fails):
                    bisect.insort(fails, min(last, order.raised_at))
        if order.component == "DataLink":
            self._last_seen[order.station_id] = now

    def open_orders(self) -> list[WorkOrder]:
        return [o for o in self.orders if o.done_at is None]

    # ------------------------------------------------------------------ each step
    def tick(self) -> None:
        """Raise work orders for silent stations; score the components once a day."""
        now = self.clock()
        if self._started is None:
            return
        silent_s = self.offline_after_heartbeats * self.heartbeat_interval_s
        for sid, last in self._last_seen.items():
            if (now - last).total_seconds() > silent_s:
                self._raise((sid, 0, "DataLink"), "offline", None)
        if self.model is None:
            return
        if self._next_score is None:
            self._next_score = self._started + timedelta(seconds=self.score_every_s)
        while now >= self._next_score:
            self._score(self._next_score)
            self._next_score += timedelta(seconds=self.score_every_s)

    def _score(self, at: datetime) -> None:
        assert self.model is not None
        keys = [k for k in self.keys() if k not in self._open]
        if not keys:
            return
        x = np.array([self.features(k, at) for k in keys])
        for k, r in zip(keys, self.model.risk(x), strict=True):
            if r >= self.model.threshold:
                self._raise(k, "predicted", float(r))

    # ------------------------------------------------------------------ the model
    def features(self, k: Key, at: datetime) -> list[float]:
        """The features of component ``k`` at ``at`` (see :data:`FEATURES`): only what
        was recorded before ``at``."""
        w = self._warnings.get(k, [])
        hi = bisect.bisect_right(w, at)

        def since(days: float) -> int:
            return hi - bisect.bisect_left(w, at - timedelta(days=days))

        gaps = 0
        if k[2] == "DataLink":
            hb = self._heartbeats.get(k[0], [])
            lo_i = bisect.bisect_left(hb, at - timedelta(days=3))
            hi_i = bisect.bisect_right(hb, at)
            limit = 1.5 * self.heartbeat_interval_s
            gaps = sum(1 for a, b in zip(hb[lo_i:hi_i], hb[lo_i + 1:hi_i], strict=False)
                       if (b - a).total_seconds() > limit)
        events = [t for t in self._failures.get(k, []) if t <= at]
        renewed = [t for t in self._renewals.get(k, []) if t <= at]
        marks = [*events[-1:], *renewed[-1:]]
        # Nothing recorded: as long ago as the feature goes (60 days).
        days = (at - max(marks)).total_seconds() / 86400.0 if marks else 60.0
        return [float(since(1)), float(since(3)), float(since(7)), float(gaps), min(days, 60.0)]

    def training_table(self, horizon_days: float, every_s: float = 21600.0
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Features at regular times over the recorded history and whether the
        component failed within ``horizon_days`` after each (the CSMS's own labels:
        the failures it was told of). Times closer than the horizon to the end of
        the history are left out (their label is not known yet)."""
        if self._started is None:
            return np.zeros((0, len(FEATURES))), np.zeros(0, dtype=int)
        end = self.clock() - timedelta(days=horizon_days)
        rows: list[list[float]] = []
        labels: list[int] = []
        t = self._started + timedelta(days=1)
        while t <= end:
            for k in self.keys():
                fails = self._failures.get(k, [])
                i = bisect.bisect_right(fails, t)
                done = [r for r in self._renewals.get(k, []) if r <= t]
                down = i > 0 and (not done or done[-1] < fails[i - 1])
                if down:
                    continue  # failed and not yet repaired: nothing to predict
                rows.append(self.features(k, t))
                labels.append(int(i < len(fails) and fails[i] <= t + timedelta(days=horizon_days)))
            t += timedelta(seconds=every_s)
        return np.array(rows, dtype=float).reshape(-1, len(FEATURES)), np.array(labels, dtype=int)


def fit_failure_model(x: np.ndarray, y: np.ndarray, *, horizon_days: float, seed: int
                      ) -> FailureModel:
    """Gradient-boosted trees on the CSMS's history (scikit-learn). ``x``/``y`` in time
    order (:meth:`StationHealth.training_table`): the decision threshold is the one
    with the best F1 score on the last 30 % of the history for a model fitted on the
    first 70 %; the model kept is then fitted on all of it."""
    from sklearn.ensemble import GradientBoostingClassifier

    if len(y) == 0 or y.min() == y.max():
        raise ValueError("the history has no failures (or nothing else) to learn from: "
                         "give it more days")

    def model() -> GradientBoostingClassifier:
        # assumption: shallow trees and a modest number of them for five features and
        # a few hundred positive rows (no tuning beyond this).
        return GradientBoostingClassifier(n_estimators=150, max_depth=2, learning_rate=0.1,
                                          random_state=seed)

    cut = int(len(y) * 0.7)
    threshold = 0.5
    if 0 < y[:cut].sum() < cut and y[cut:].sum() > 0:
        first = model().fit(x[:cut], y[:cut])
        p = first.predict_proba(x[cut:])[:, 1]
        yv = y[cut:]
        best = -1.0
        for th in np.linspace(0.05, 0.95, 19):
            pred = p >= th
            tp = float((pred & (yv == 1)).sum())
            denom = pred.sum() + (yv == 1).sum()
            f1 = 2 * tp / denom if denom else 0.0
            if f1 > best + 1e-12:
                best, threshold = f1, float(th)
    clf = model().fit(x, y)
    return FailureModel(clf, threshold, horizon_days, len(y), int(y.sum()))


def precision_recall(predicted: Sequence[tuple[Key, datetime]],
                     failures: Sequence[tuple[Key, datetime]], horizon_days: float
                     ) -> dict[str, float]:
    """Score predictions against what happened: a prediction is right if its
    component would have failed within the horizon after it (``failures``: the
    failure times the truth knows, prevented ones included)."""
    h = timedelta(days=horizon_days)
    right = [(k, t, f) for k, t in predicted for kf, f in failures if kf == k and t <= f <= t + h]
    hit = {(k, f) for k, _t, f in right}
    lead = [(f - t).total_seconds() / 3600.0 for k, t, f in right]
    return {
        "precision_percent": 100.0 * len({(k, t) for k, t, _ in right}) / len(predicted)
        if predicted else math.nan,
        "recall_percent": 100.0 * len(hit) / len(failures) if failures else math.nan,
        "lead_time_h": float(np.mean(lead)) if lead else math.nan,
    }


__all__ = ["COMPONENT_OF_CODE_16", "EVSE_COMPONENTS", "FEATURES", "STATION_COMPONENTS",
           "FailureModel", "StationHealth", "WorkOrder", "fit_failure_model",
           "precision_recall"]
