"""Named LV feeder networks and pandapower JSON files."""

from __future__ import annotations

import copy
import os
import random
from collections.abc import Callable
from pathlib import Path

import pandapower as pp
import pandapower.networks as pn

from evtwin.grid.exceptions import NetworkFileError, UnknownNetworkError

__all__ = ["NETWORKS", "NETWORK_SEED", "load_network"]

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


def load_network(network: str | os.PathLike[str]) -> pp.pandapowerNet:
    """Return a fresh pandapower network.

    Args:
        network: a key of :data:`NETWORKS` (e.g. ``"kerber_dorfnetz"``, ``"cigre_lv"``)
            or a path to a pandapower JSON file (its name must end with ``.json``).

    Raises:
        UnknownNetworkError: ``network`` is neither a known name nor a ``.json`` path.
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
