"""Where to draw a feeder's buses: its own geodata, or a tree layout computed from it.

The tree layout puts each bus at its electrical distance from the external grid
(x, km along the lines) and spreads the branches apart (y): the leaves of the tree
grown from the external grid take one row each, in depth-first order, and a bus
with branches sits at the mean of its children's rows. Radial LV feeders, which is
what pandapower's Kerber networks are, read as they are built.
"""

from __future__ import annotations

import json
import math

import networkx as nx
import pandapower as pp
import pandapower.topology as top

from evtwin.grid.feeder import distance_from_source_km

__all__ = ["bus_positions"]


def bus_positions(net: pp.pandapowerNet) -> tuple[dict[int, tuple[float, float]], bool]:
    """``(positions, from_geodata)``: x, y of every bus. From the network's geodata when
    every bus has it, else the tree layout (x: km from the external grid)."""
    geo = _geodata(net)
    if geo is not None:
        return geo, True
    return _tree_layout(net), False


def _geodata(net: pp.pandapowerNet) -> dict[int, tuple[float, float]] | None:
    if "geo" not in net.bus.columns:
        return None
    out: dict[int, tuple[float, float]] = {}
    for bus, text in net.bus["geo"].items():
        if not isinstance(text, str):
            return None
        try:
            x, y = json.loads(text)["coordinates"][:2]
        except (ValueError, KeyError, TypeError):
            return None
        out[int(bus)] = (float(x), float(y))
    # Many buses of one point (a substation drawn as one dot) say nothing: lay out.
    if len(set(out.values())) < 0.8 * len(out):
        return None
    return out


def _tree_layout(net: pp.pandapowerNet) -> dict[int, tuple[float, float]]:
    graph = top.create_nxgraph(net, respect_switches=True)
    distance = distance_from_source_km(net)
    roots = [int(b) for b in net.ext_grid["bus"]]
    rows: dict[int, float] = {}
    next_row = 0.0
    seen: set[int] = set()
    for root in roots:
        if root in seen or root not in graph:
            continue
        tree = nx.dfs_tree(graph, root)
        seen.update(int(b) for b in tree.nodes)
        for bus in nx.dfs_postorder_nodes(tree, root):
            children = list(tree.successors(bus))
            if children:
                rows[int(bus)] = sum(rows[int(c)] for c in children) / len(children)
            else:
                rows[int(bus)] = next_row
                next_row += 1.0
    # Buses not reached from any external grid: a row each, below the rest.
    for bus in net.bus.index:
        if int(bus) not in rows:
            rows[int(bus)] = next_row
            next_row += 1.0
    return {int(b): (distance.get(int(b), math.nan), rows[int(b)]) for b in net.bus.index}
