"""Fit a site kind's driver behaviour from a sessions file (``evtwin fit-behaviour``).

The model fitted is the one :mod:`evtwin.agents.behaviour` draws from: per
weekday and weekend, a mixture of normals over the arrival hour whose
components each have their own median stay, a common log-std of the stay
within a component, and a lognormal energy per visit correlated with the
stay's deviation from its component's median. The arrival hour and log stay
are fitted jointly by EM (numpy; a one-dimensional mixture does not need
scikit-learn), so stays help to separate the components; the energy's
median, log-std and correlation follow from the fitted responsibilities.
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

import numpy as np

from .exceptions import ScenarioError
from .scenario import zone

#: Fewer sessions than this per component and the weekend gets no mixture of its own.
MIN_SESSIONS_PER_COMPONENT = 30


@dataclass(frozen=True)
class Sessions:
    """Sessions as the fit needs them: local arrival hour, stay, energy."""

    arrival_h: np.ndarray
    """Local wall-clock hour of arrival, [0, 24)."""
    weekend: np.ndarray
    """True where the arrival falls on a Saturday or Sunday."""
    dwell_h: np.ndarray
    energy_kwh: np.ndarray
    day: np.ndarray
    """Local calendar day of arrival (days since 1970-01-01)."""
    ev_id: np.ndarray | None = None
    """The EV of each session, where the file names one."""


def _parse_time(text: str, tz: tzinfo | None, source: str, row: int, column: str
                ) -> datetime:
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ScenarioError(source, [(f"row {row}: {column}",
                                      f"not an ISO timestamp: {text!r}")]) from None
    if t.tzinfo is None:
        if tz is None:
            raise ScenarioError(source, [(f"row {row}: {column}", f"{text!r} has no UTC "
                                          "offset; give --timezone (e.g. Europe/Amsterdam)")])
        return t.replace(tzinfo=tz)
    return t.astimezone(tz) if tz is not None else t


def read_sessions(path: str | Path, timezone: str | None = None) -> Sessions:
    """Read an evtwin sessions CSV: columns ``arrival``, ``departure`` (ISO timestamps),
    ``energy_kwh``, optionally ``ev_id``. Naive times are in ``timezone``; times with an
    offset are converted to it (kept in their own offset without one).

    The one place that reads files, so it can later hand over to evtwin.sim.sessions.
    """
    source = str(path)
    try:
        tz = zone(timezone) if timezone else None
    except ValueError as exc:
        raise ScenarioError(source, [("--timezone", str(exc))]) from None
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # a BOM is not a column
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise ScenarioError(source, [("", f"cannot read: {exc.strerror or exc}")]) from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ScenarioError(source, [("", f"not a UTF-8 CSV file ({exc})")]) from None
    if not rows:
        raise ScenarioError(source, [("", "no sessions")])
    missing = [c for c in ("arrival", "departure", "energy_kwh") if c not in rows[0]]
    if missing:
        raise ScenarioError(source, [("", f"missing column(s) {', '.join(missing)}; "
                                      "need arrival, departure, energy_kwh")])
    hours, weekend, dwell, energy, day, ev = [], [], [], [], [], []
    for i, r in enumerate(rows, start=2):
        if any(r.get(c) is None for c in ("arrival", "departure", "energy_kwh")):
            raise ScenarioError(source, [(f"row {i}", "fewer columns than the header")])
        a = _parse_time(r["arrival"], tz, source, i, "arrival")
        d = _parse_time(r["departure"], tz, source, i, "departure")
        try:
            e = float(r["energy_kwh"])
        except ValueError:
            e = float("nan")
        if not np.isfinite(e):
            raise ScenarioError(source, [(f"row {i}: energy_kwh",
                                          f"not a finite number: {r['energy_kwh']!r}")])
        # In UTC: two local times across a daylight-saving change are an hour apart more
        # (or less) than their wall clocks say.
        stay = (d.astimezone(UTC) - a.astimezone(UTC)).total_seconds() / 3600.0
        if stay <= 0 or e <= 0:
            continue  # a zero-length or empty session says nothing about behaviour
        hours.append(a.hour + a.minute / 60.0 + a.second / 3600.0)
        weekend.append(a.weekday() >= 5)
        dwell.append(stay)
        energy.append(e)
        day.append(a.date().toordinal())
        ev.append(r.get("ev_id") or "")
    if len(hours) < 10:
        raise ScenarioError(source, [("", f"{len(hours)} usable sessions; need at least 10")])
    ids = np.array(ev) if all(ev) else None
    return Sessions(np.array(hours), np.array(weekend, dtype=bool), np.array(dwell),
                    np.array(energy), np.array(day), ids)


@dataclass(frozen=True)
class Mixture:
    """A fitted arrival mixture with a median stay per component."""

    weights: np.ndarray
    means_h: np.ndarray
    stds_h: np.ndarray
    dwell_medians_h: np.ndarray
    resp: np.ndarray = field(repr=False)
    """Responsibilities, sessions × components."""


def fit_mixture(hour: np.ndarray, log_dwell: np.ndarray, n: int, *, iterations: int = 500,
                tol: float = 1e-9) -> tuple[Mixture, float]:
    """EM for a mixture over (arrival hour, log stay): component k is
    Normal(mean_k, std_k) × Normal(log median stay_k, sigma) with a shared sigma.
    Deterministic: starts from the hour's quantiles. Returns the mixture and sigma."""
    x, y = np.asarray(hour, float), np.asarray(log_dwell, float)
    edges = np.quantile(x, np.linspace(0.0, 1.0, n + 1))
    groups = [(x >= lo) & (x <= hi) for lo, hi in itertools.pairwise(edges)]
    means = np.array([x[g].mean() for g in groups])
    stds = np.array([max(x[g].std(), 0.5) for g in groups])
    dmed = np.array([y[g].mean() for g in groups])
    w = np.full(n, 1.0 / n)
    sigma = max(float(y.std()), 0.05)
    last = -np.inf
    resp = np.full((len(x), n), 1.0 / n)
    for _ in range(iterations):
        logp = (np.log(w) - np.log(stds) - 0.5 * ((x[:, None] - means) / stds) ** 2
                - np.log(sigma) - 0.5 * ((y[:, None] - dmed) / sigma) ** 2)
        top = logp.max(axis=1, keepdims=True)
        like = np.exp(logp - top)
        total = like.sum(axis=1, keepdims=True)
        resp = like / total
        ll = float((np.log(total) + top).sum())
        nk = resp.sum(axis=0) + 1e-12
        w = nk / nk.sum()
        means = (resp * x[:, None]).sum(axis=0) / nk
        stds = np.sqrt((resp * (x[:, None] - means) ** 2).sum(axis=0) / nk)
        stds = np.maximum(stds, 0.05)  # no component collapses onto one minute
        dmed = (resp * y[:, None]).sum(axis=0) / nk
        sigma = max(float(np.sqrt((resp * (y[:, None] - dmed) ** 2).sum() / len(x))), 0.01)
        if ll - last < tol * abs(ll):
            break
        last = ll
    order = np.argsort(means)
    return Mixture(w[order], means[order], stds[order], np.exp(dmed[order]),
                   resp[:, order]), sigma


@dataclass(frozen=True)
class Fit:
    """What ``fit_behaviour`` found: the overrides block and what it was fitted to."""

    block: dict[str, Any]
    """The ``[sites.behaviour]`` fields, rounded for a scenario file."""
    sessions: Sessions
    weekday: Mixture
    weekend: Mixture | None
    n_sessions: int


def _r(v: Any, nd: int = 3) -> Any:
    if isinstance(v, np.ndarray):
        return [round(float(x), nd) for x in v]
    return round(float(v), nd)


def fit_behaviour(s: Sessions, *, components: int = 3) -> Fit:
    """Fit the behaviour model to sessions; the result's ``block`` is a
    ``[sites.behaviour]`` table that :func:`evtwin.agents.behaviour_for` takes."""
    if components < 1:
        raise ScenarioError("--components", [("", f"must be at least 1, not {components}")])
    wd = ~s.weekend
    if wd.sum() < components * MIN_SESSIONS_PER_COMPONENT:
        raise ScenarioError("sessions", [("", f"{int(wd.sum())} weekday sessions are too few "
                                          f"for {components} components")])
    log_d, log_e = np.log(s.dwell_h), np.log(s.energy_kwh)
    mix, sigma = fit_mixture(s.arrival_h[wd], log_d[wd], components)
    block: dict[str, Any] = {
        "arrival_weights": _r(mix.weights), "arrival_means_h": _r(mix.means_h, 2),
        "arrival_stds_h": _r(mix.stds_h, 2), "dwell_medians_h": _r(mix.dwell_medians_h, 2)}
    # Within-component deviation of log stay, for the stay-energy correlation.
    resid = np.empty(len(log_d))
    resid[wd] = log_d[wd] - mix.resp @ np.log(mix.dwell_medians_h)
    weekend_mix: Mixture | None = None
    if (~wd).sum() >= components * MIN_SESSIONS_PER_COMPONENT:
        weekend_mix, sigma_we = fit_mixture(s.arrival_h[~wd], log_d[~wd], components)
        sigma = float(np.sqrt((sigma**2 * wd.sum() + sigma_we**2 * (~wd).sum()) / len(wd)))
        block.update({"weekend_arrival_weights": _r(weekend_mix.weights),
                      "weekend_arrival_means_h": _r(weekend_mix.means_h, 2),
                      "weekend_arrival_stds_h": _r(weekend_mix.stds_h, 2),
                      "weekend_dwell_medians_h": _r(weekend_mix.dwell_medians_h, 2)})
        resid[~wd] = log_d[~wd] - weekend_mix.resp @ np.log(weekend_mix.dwell_medians_h)
    else:
        if (~wd).any():  # too few to fit: their deviation from their own median
            resid[~wd] = log_d[~wd] - np.log(np.median(s.dwell_h[~wd]))
    corr = float(np.corrcoef(resid, log_e)[0, 1]) if len(resid) > 2 else 0.0
    if not np.isfinite(corr):  # constant stays or energies: no correlation to speak of
        corr = 0.0
    block.update({
        # The single normal and single median: what the runner's CSMS assumes.
        "arrival_mean_h": _r(s.arrival_h.mean(), 2), "arrival_std_h": _r(s.arrival_h.std(), 2),
        "arrival_min_h": _r(np.floor(s.arrival_h.min() * 4) / 4, 2),
        "arrival_max_h": _r(min(23.99, np.ceil(s.arrival_h.max() * 4) / 4), 2),
        "dwell_median_h": _r(np.median(s.dwell_h), 2), "dwell_sigma": _r(sigma),
        "dwell_min_h": _r(max(0.01, s.dwell_h.min()), 2), "dwell_max_h": _r(s.dwell_h.max(), 2),
        "energy_median_kwh": _r(np.exp(log_e.mean()), 2), "energy_sigma": _r(log_e.std()),
        "energy_min_kwh": _r(max(0.01, s.energy_kwh.min()), 2),
        "energy_max_kwh": _r(s.energy_kwh.max(), 2),
        "dwell_energy_corr": _r(np.clip(corr, -1.0, 1.0)),
    })
    block.update(_plugin_shares(s))
    return Fit(block, s, mix, weekend_mix, len(s.arrival_h))


def _plugin_shares(s: Sessions) -> dict[str, float]:
    """Plug-in share per weekday and the weekend's relative share, where the file names
    EVs: the share of EV-days with a session over the span of the file."""
    if s.ev_id is None:
        return {}
    first, last = int(s.day.min()), int(s.day.max())
    days = np.arange(first, last + 1)
    is_weekend = np.array([(d - 1) % 7 >= 5 for d in days])  # ordinal 1 was a Monday
    n_ev = len(set(s.ev_id.tolist()))
    plugged = {(e, int(d)) for e, d in zip(s.ev_id.tolist(), s.day, strict=True)}
    wd_days = {int(d) for d in days[~is_weekend]}
    we_days = {int(d) for d in days[is_weekend]}
    wd = sum(1 for _, d in plugged if d in wd_days) / max(1, n_ev * len(wd_days))
    out = {"plugin_share": _r(min(1.0, wd))}
    if we_days and wd > 0:
        we = sum(1 for _, d in plugged if d in we_days) / (n_ev * len(we_days))
        out["weekend_share"] = _r(min(1.0, we / wd))
    return out


def block_toml(fit: Fit, source: str, kind: str | None) -> str:
    """The ``[sites.behaviour]`` table as TOML, with a header saying what it came from."""
    import tomli_w

    head = (f"# Fitted by evtwin fit-behaviour from {source}: {fit.n_sessions} sessions"
            + (f" (site kind {kind})" if kind else "") + ".\n"
            "# Put it under the site's [[sites]] entry.\n")
    return head + "[sites.behaviour]\n" + tomli_w.dumps(fit.block)


def _mixture_pdf(x: np.ndarray, m: Mixture) -> np.ndarray:
    z = (x[:, None] - m.means_h) / m.stds_h
    return (m.weights * np.exp(-0.5 * z**2) / (m.stds_h * np.sqrt(2 * np.pi))).sum(axis=1)


def _lognormal_pdf(x: np.ndarray, median: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * (np.log(x / median) / sigma) ** 2) / (x * sigma * np.sqrt(2 * np.pi))


def plot_fit(fit: Fit, path: Path) -> None:
    """Histograms of the arrival hour (weekday, weekend), stay and energy per visit with
    the fitted densities over them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, b = fit.sessions, fit.block
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    hours = np.linspace(0, 24, 241)
    for ax, mask, mix, title in ((axes[0, 0], ~s.weekend, fit.weekday, "weekdays"),
                                 (axes[0, 1], s.weekend, fit.weekend or fit.weekday,
                                  "weekends" + ("" if fit.weekend else " (weekday fit)"))):
        ax.hist(s.arrival_h[mask], bins=48, range=(0, 24), density=True, alpha=0.5,
                label=f"observed ({int(mask.sum())})")
        ax.plot(hours, _mixture_pdf(hours, mix), label=f"fitted, {len(mix.weights)} components")
        ax.set(xlabel="arrival hour (h, local time)", ylabel="density (1/h)",
               title=f"Arrivals, {title}")
        ax.legend()
    # Stay: the mixture of each component's lognormal, weighted as the sessions fall.
    ax = axes[1, 0]
    top = float(np.quantile(s.dwell_h, 0.995))
    ax.hist(s.dwell_h, bins=60, range=(0, top), density=True, alpha=0.5, label="observed")
    x = np.linspace(top / 600, top, 300)
    weights = [(fit.weekday, (~s.weekend).mean())]
    if fit.weekend is not None:
        weights.append((fit.weekend, s.weekend.mean()))
    else:
        weights = [(fit.weekday, 1.0)]
    pdf = sum(share * sum(w * _lognormal_pdf(x, d, b["dwell_sigma"])
                          for w, d in zip(m.weights, m.dwell_medians_h, strict=True))
              for m, share in weights)
    ax.plot(x, pdf, label="fitted")
    ax.set(xlabel="stay (h)", ylabel="density (1/h)", title="Stay per visit")
    ax.legend()
    ax = axes[1, 1]
    top = float(np.quantile(s.energy_kwh, 0.995))
    ax.hist(s.energy_kwh, bins=60, range=(0, top), density=True, alpha=0.5, label="observed")
    x = np.linspace(top / 600, top, 300)
    ax.plot(x, _lognormal_pdf(x, b["energy_median_kwh"], b["energy_sigma"]),
            label=f"fitted (corr. with stay {b['dwell_energy_corr']:.2f})")
    ax.set(xlabel="energy per visit (kWh)", ylabel="density (1/kWh)", title="Energy per visit")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["Fit", "Mixture", "Sessions", "block_toml", "fit_behaviour", "fit_mixture",
           "plot_fit", "read_sessions"]
