"""Unbalanced (per-phase) low-voltage feeders: zero-sequence data, phase assignment,
voltage unbalance and neutral current.

power-grid-model solves the three-phase unbalanced power flow (``symmetric=False``)
from per-phase loads and the lines' and transformer's zero-sequence data; pandapower's
``runpp_3ph`` is the reference (``tests/test_unbalanced.py`` compares the two).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pandapower as pp

__all__ = ["R0_PER_R1", "X0_PER_X1", "add_zero_sequence", "neutral_current_a",
           "spread_over_phases", "unbalance_percent"]

FloatArray = npt.NDArray[np.float64]

#: Zero- to positive-sequence resistance and reactance of LV cables where a network
#: has no zero-sequence data: about 4 for four-core cables with the neutral as return
#: conductor (a common planning approximation, e.g. in the pandapower and
#: power-grid-model asymmetric examples; state it when you use it). The capacitance
#: is taken equal.
R0_PER_R1 = 4.0
X0_PER_X1 = 4.0

_A = np.exp(2j * np.pi / 3)


def add_zero_sequence(net: pp.pandapowerNet, *, r0_per_r1: float = R0_PER_R1,
                      x0_per_x1: float = X0_PER_X1) -> list[str]:
    """Fill the zero-sequence data an unbalanced power flow needs where ``net`` lacks
    it (in place): lines ``r0 = r0_per_r1 * r1``, ``x0 = x0_per_x1 * x1``, ``c0 = c1``;
    transformers Dyn (the usual LV distribution transformer: delta on the MV side,
    earthed star on the LV side) with zero-sequence short-circuit voltage equal to
    the positive-sequence one; an external grid of 1000 MVA short-circuit power.
    Returns what was filled, for the record."""
    filled: list[str] = []

    def fill(table: str, column: str, values: object) -> None:
        df = net[table]
        if len(df) == 0:
            return
        if column not in df.columns or df[column].isna().any():
            current = df[column] if column in df.columns else None
            df[column] = values if current is None else current.fillna(values)
            filled.append(f"{table}.{column}")

    fill("line", "r0_ohm_per_km", net.line.r_ohm_per_km * r0_per_r1)
    fill("line", "x0_ohm_per_km", net.line.x_ohm_per_km * x0_per_x1)
    fill("line", "c0_nf_per_km", net.line.c_nf_per_km)
    fill("line", "g0_us_per_km", 0.0)
    fill("trafo", "vector_group", "Dyn")
    fill("trafo", "vk0_percent", net.trafo.vk_percent)
    fill("trafo", "vkr0_percent", net.trafo.vkr_percent)
    fill("trafo", "mag0_percent", 100.0)
    fill("trafo", "mag0_rx", 0.0)
    fill("ext_grid", "s_sc_max_mva", 1000.0)
    fill("ext_grid", "rx_max", 0.1)
    fill("ext_grid", "x0x_max", 1.0)
    fill("ext_grid", "r0x0_max", 0.1)
    return filled


def spread_over_phases(n: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Phases 0, 1, 2 (L1, L2, L3) for ``n`` single-phase connections: as evenly as
    possible (counts differ by at most one), in a seeded random order."""
    return rng.permutation(np.arange(n, dtype=np.int64) % 3)


def _complex(u_v: FloatArray, angle_rad: FloatArray) -> npt.NDArray[np.complex128]:
    return u_v * np.exp(1j * angle_rad)


def unbalance_percent(u_v: FloatArray, angle_rad: FloatArray) -> FloatArray:
    """Voltage unbalance factor |V2| / |V1| in % per bus (EN 50160 allows 2 % on
    10-minute means), from phase voltages ``(..., 3)``."""
    v = _complex(u_v, angle_rad)
    v1 = (v[..., 0] + _A * v[..., 1] + _A * _A * v[..., 2]) / 3.0
    v2 = (v[..., 0] + _A * _A * v[..., 1] + _A * v[..., 2]) / 3.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(np.abs(v2) / np.abs(v1) * 100.0, dtype=np.float64)


def neutral_current_a(p_w: FloatArray, q_var: FloatArray, u_v: FloatArray,
                      angle_rad: FloatArray) -> FloatArray:
    """The return (neutral) current of branches, |Ia + Ib + Ic| in A, from each phase's
    power flowing in ``(..., 3)`` and the phase-to-neutral voltages where it enters."""
    v = _complex(u_v, angle_rad)
    with np.errstate(invalid="ignore", divide="ignore"):
        current = np.conj((p_w + 1j * q_var) / v)
    return np.asarray(np.abs(current.sum(axis=-1)), dtype=np.float64)


def phase_shares(phases: Sequence[int]) -> FloatArray:
    """Per-connection shares of its power on L1, L2, L3: ``-1`` three-phase (a third
    each), ``0``-``2`` all on that phase. Shape ``(n, 3)``."""
    out = np.zeros((len(phases), 3))
    for i, ph in enumerate(phases):
        if ph < 0:
            out[i] = 1.0 / 3.0
        else:
            out[i, int(ph)] = 1.0
    return out
