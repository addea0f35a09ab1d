"""Exceptions raised by :mod:`evtwin.grid`.

Every error derives from :class:`GridError` and carries the offending value as a
structured attribute as well as in its message.  Each class defines ``__reduce__``
so errors survive pickling (e.g. when a run executes in a Dask worker).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BusMappingError",
    "GridError",
    "NetworkExtraError",
    "NetworkFileError",
    "PowerFlowError",
    "UnknownNetworkError",
    "UnknownSimbenchCodeError",
]


class GridError(Exception):
    """Base class of every error raised by ``evtwin.grid``."""


class UnknownNetworkError(GridError):
    """A network name that is neither a known name nor a ``.json`` path."""

    def __init__(self, name: str, valid: Sequence[str]) -> None:
        self.name = name
        self.valid = tuple(valid)
        super().__init__(
            f"Unknown network {name!r}; valid names: {', '.join(self.valid)} "
            "(or a path to a pandapower .json file)"
        )

    def __reduce__(self) -> tuple[type[UnknownNetworkError], tuple[str, tuple[str, ...]]]:
        return (type(self), (self.name, self.valid))


class UnknownSimbenchCodeError(UnknownNetworkError):
    """A ``simbench:`` network name whose SimBench code (or ``feeder=`` part) does not
    exist; ``reason`` says what is wrong."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.valid = ()
        self.reason = reason
        # Not UnknownNetworkError's message: the codes are too many to list.
        GridError.__init__(
            self,
            f"Unknown SimBench network {name!r}: {reason}; list the codes with "
            "simbench.collect_all_simbench_codes() (e.g. simbench:1-LV-semiurb4--0-sw, "
            "simbench:1-MVLV-rural-all-0-sw:feeder=5)",
        )

    def __reduce__(  # type: ignore[override]
        self,
    ) -> tuple[type[UnknownSimbenchCodeError], tuple[str, str]]:
        return (type(self), (self.name, self.reason))


class NetworkExtraError(GridError):
    """A network that needs an optional extra of evtwin that is not installed."""

    def __init__(self, name: str, extra: str) -> None:
        self.name = name
        self.extra = extra
        super().__init__(
            f"Network {name!r} needs the optional extra {extra!r}: "
            f"pip install 'evtwin[{extra}]'"
        )

    def __reduce__(self) -> tuple[type[NetworkExtraError], tuple[str, str]]:
        return (type(self), (self.name, self.extra))


class NetworkFileError(GridError):
    """A pandapower JSON network file that is missing or cannot be read."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"Cannot load network file {path!r}: {reason}")

    def __reduce__(self) -> tuple[type[NetworkFileError], tuple[str, str]]:
        return (type(self), (self.path, self.reason))


class BusMappingError(GridError):
    """An EV-station-to-bus mapping that does not fit the network.

    ``bus`` is the offending pandapower bus index, or ``None`` when the problem
    is not about a single bus (e.g. the number of buses given is wrong).
    """

    def __init__(self, bus: int | None, reason: str) -> None:
        self.bus = bus
        self.reason = reason
        where = "station bus mapping" if bus is None else f"bus {bus}"
        super().__init__(f"Invalid {where}: {reason}")

    def __reduce__(self) -> tuple[type[BusMappingError], tuple[int | None, str]]:
        return (type(self), (self.bus, self.reason))


class PowerFlowError(GridError):
    """The power flow did not converge.

    ``t_s`` is the simulation time of the failed step when known.
    """

    def __init__(self, engine: str, detail: str, t_s: float | None = None) -> None:
        self.engine = engine
        self.detail = detail
        self.t_s = t_s
        when = "" if t_s is None else f" at t={t_s:g} s"
        super().__init__(f"Power flow ({engine}) did not converge{when}: {detail}")

    def __reduce__(
        self,
    ) -> tuple[type[PowerFlowError], tuple[str, str, float | None]]:
        return (type(self), (self.engine, self.detail, self.t_s))
