"""Named LV feeder networks, SimBench benchmark grids and pandapower JSON files."""

from __future__ import annotations

import copy
import os
import random
from collections.abc import Callable
from pathlib import Path

import networkx as nx
import numpy as np
import pandapower as pp
import pandapower.networks as pn
import pandapower.toolbox as tb
import pandapower.topology as top

from evtwin.grid.exceptions import (
    NetworkExtraError,
    NetworkFileError,
    UnknownNetworkError,
    UnknownSimbenchCodeError,
)

__all__ = ["NETWORKS", "NETWORK_SEED", "SIMBENCH_PREFIX", "is_simbench", "load_network"]

#: Network names that start with this are SimBench grids (see load_network).
SIMBENCH_PREFIX = "simbench:"
#: Above this nominal voltage a bus is not low voltage: no EV stations there.
LV_MAX_KV = 1.0
#: A transformer with its high-voltage side above this feeds an MV grid (HV/MV).
_HV_MIN_KV = 60.0

#: Seed of Python's ``random`` while a named network is built (see load_network).
NETWORK_SEED = 0

#: Every network name :func:`load_network` accepts, with the pandapower factory it calls.
#: Bus counts: Kerber Dorfnetz 116, CIGRE LV 44 (three feeders behind three
#: transformers), Kerber Landnetz Kabel 1 18, Kerber Vorstadtnetz Kabel 1 294.
NETWORKS: dict[str, Callable[[], pp.pandapowerNet]] = {
    "kerber_dorfnetz": pn.create_kerber_dorfnetz,
    "create_cigre_network_lv": pn.create_cigre_network_lv,
    "cigre_lv": pn.create_cigre_network_lv,
    "kerber_landnetz_kabel_1": pn.create_kerber_landnetz_kabel_1,
    "kerber_vorstadtnetz_kabel_1": pn.create_kerber_vorstadtnetz_kabel_1,
}


#: Networks built in this process, by name or by JSON path, size and modification time.
_CACHE: dict[str, pp.pandapowerNet] = {}


def is_simbench(network: str | os.PathLike[str]) -> bool:
    """Whether ``network`` names a SimBench grid (``simbench:<code>``)."""
    return os.fspath(network).startswith(SIMBENCH_PREFIX)


def load_network(network: str | os.PathLike[str]) -> pp.pandapowerNet:
    """Return a fresh pandapower network.

    Args:
        network: a key of :data:`NETWORKS` (e.g. ``"kerber_dorfnetz"``, ``"cigre_lv"``),
            a SimBench grid ``"simbench:<code>"`` (e.g. ``"simbench:1-LV-semiurb4--0-sw"``,
            ``"simbench:1-MVLV-rural-all-0-sw:feeder=5"``; needs the ``simbench`` extra,
            see :func:`_load_simbench`) or a path to a pandapower JSON file (its name
            must end with ``.json``).

    Raises:
        UnknownNetworkError: ``network`` is neither a known name nor a ``.json`` path
            (:class:`UnknownSimbenchCodeError` for an unknown SimBench code).
        NetworkExtraError: a SimBench grid without the ``simbench`` package.
        NetworkFileError: the JSON file is missing or is not a pandapower network.
    """
    text = os.fspath(network)
    if text.lower().endswith(".json"):
        path = Path(text)
        try:
            stat = path.stat()
            key = f"{path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}"
        except OSError:
            return _load_json(path)  # reports the missing file
    else:
        key = text
    # Building a Kerber feeder takes ~0.6 s, a deep copy ~10 ms: a process that
    # runs many scenarios (a sweep worker) builds each network once. Callers get
    # a copy, so a feeder that adds its stations never changes the cached one.
    cached = _CACHE.get(key)
    if cached is None:
        if text.lower().endswith(".json"):
            cached = _load_json(Path(text))
        elif is_simbench(text):
            cached = _load_simbench(text)
        else:
            factory = NETWORKS.get(text)
            if factory is None:
                raise UnknownNetworkError(text, sorted(NETWORKS))
            # The Kerber factories draw line types from Python's global `random`
            # (e.g. "NAYY 4x50" vs "NAYY 4x50 SE" per branch), so the same name
            # would give a different feeder on every call. Seed it for the call
            # and put the caller's random state back: the same name always gives
            # the same feeder.
            state = random.getstate()
            random.seed(NETWORK_SEED)
            try:
                cached = factory()
            finally:
                random.setstate(state)
        _CACHE[key] = cached
    return copy.deepcopy(cached)


def _load_json(path: Path) -> pp.pandapowerNet:
    if not path.is_file():
        raise NetworkFileError(str(path), "no such file")
    try:
        net = pp.from_json(str(path))
    # pandapower raises many exception types for malformed files; report them all as one.
    except Exception as exc:
        raise NetworkFileError(str(path), f"not a pandapower network ({exc})") from exc
    if not isinstance(net, pp.pandapowerNet):
        raise NetworkFileError(str(path), "not a pandapower network")
    if len(net.bus) == 0:
        raise NetworkFileError(str(path), "network has no buses")
    return net


def _load_simbench(name: str) -> pp.pandapowerNet:
    """A SimBench grid, ready for :class:`~evtwin.grid.Feeder`.

    ``name`` is ``simbench:<code>`` or ``simbench:<code>:feeder=<n>``. The code is a
    SimBench code (``simbench.collect_all_simbench_codes()``): ``1-LV-<type>--0-sw``
    (one LV grid, external grid at its 20 kV bus), ``1-MV-<type>--0-sw`` (an MV grid
    behind its HV/MV transformers; its loads aggregate whole LV grids, so no station can
    go on it), ``1-MVLV-<type>-<lv>-0-sw`` (an MV grid with one LV grid below it in
    detail) or ``1-MVLV-<type>-all-0-sw`` (the MV grid with every LV grid below it:
    5,000-10,000 buses). ``:feeder=<n>`` keeps only the n-th MV feeder of a grid with an
    HV/MV transformer (the lines leaving the MV busbar up to the open ring switches,
    with every LV grid below them; feeders numbered from 1 by their lowest bus index),
    the HV/MV transformers and the external grid: a district rather than a town.

    What is changed from SimBench's own net, and why:

    - static generators (PV, wind, biomass) and storage units are dropped: the feeder
      drives only loads each step, so they would inject their installed power at every
      hour, night included. Add PV with the scenario's ``[[pv]]`` entries.
    - transformers without a vector group get ``Dyn<clock>`` from their phase shift
      (SimBench leaves it empty; power-grid-model's converter needs it).

    The loads keep their ``profile`` column and the net keeps ``net.profiles`` (see
    :class:`~evtwin.grid.profiles.LoadTimeSeries`).
    """
    spec = name[len(SIMBENCH_PREFIX):]
    code, _, part = spec.partition(":")
    feeder: int | None = None
    if part:
        number = part.removeprefix("feeder=")
        if number == part or not number.isdecimal() or int(number) < 1:
            raise UnknownSimbenchCodeError(name, f"{part!r} is not feeder=<n> (n = 1, 2, ...)")
        feeder = int(number)
    try:
        import simbench as sb
    except ImportError as exc:
        raise NetworkExtraError(name, "simbench") from exc
    if code not in sb.collect_all_simbench_codes():
        raise UnknownSimbenchCodeError(name, f"no SimBench code {code!r}")
    net = sb.get_simbench_net(code)
    if feeder is not None:
        net = _mv_feeder(net, name, feeder)
    net.sgen.drop(net.sgen.index, inplace=True)
    net.storage.drop(net.storage.index, inplace=True)
    trafo = net.trafo
    clock = (np.round(trafo["shift_degree"].to_numpy(dtype=np.float64) / 30.0).astype(int)
             % 12)
    missing = trafo["vector_group"].isna().to_numpy()
    trafo.loc[missing, "vector_group"] = [f"Dyn{c}" for c in clock[missing]]
    return net


def _mv_feeder(net: pp.pandapowerNet, name: str, number: int) -> pp.pandapowerNet:
    """The part of ``net`` that the ``number``-th MV feeder supplies (see _load_simbench)."""
    hv_mv = net.trafo[net.trafo["vn_hv_kv"] > _HV_MIN_KV]
    if hv_mv.empty:
        raise UnknownSimbenchCodeError(name, "feeder= needs a grid with an HV/MV transformer")
    busbar = {int(b) for b in hv_mv["lv_bus"]}
    hv = {int(b) for b in net.bus.index[net.bus["vn_kv"] > _HV_MIN_KV]}
    graph = top.create_nxgraph(net, respect_switches=True)
    graph.remove_nodes_from(busbar | hv)
    feeders = sorted((c for c in nx.connected_components(graph)), key=min)
    if number > len(feeders):
        sizes = ", ".join(
            f"feeder={i} ({sum(net.bus.at[b, 'vn_kv'] <= LV_MAX_KV for b in c)} LV buses)"
            for i, c in enumerate(feeders, 1))
        raise UnknownSimbenchCodeError(name, f"the grid has {len(feeders)} MV feeders: {sizes}")
    keep = hv | busbar | {int(b) for b in feeders[number - 1]}
    return tb.select_subnet(net, keep, include_switch_buses=False, include_results=False,
                            keep_everything_else=True)
