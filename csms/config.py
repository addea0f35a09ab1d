"""The standalone CSMS's configuration file (TOML), as strict pydantic models.

Every error is reported at once with its file and field, like scenario files::

    csms.toml: stations.0.evse_max_kw: must be > 0
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .exceptions import ConfigError
from .model import CSMSConfig, EvseSpec, SiteSpec, StationSpec, Tariff
from .strategies import strategy_names

_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "extra_forbidden": "unknown field",
    "missing": "required field is missing",
}


def validation_problems(err: ValidationError) -> list[tuple[str, str]]:
    """pydantic errors as ``(dotted.path, short message)`` pairs, all of them."""
    out = []
    for e in err.errors():
        if not e["loc"] and e["type"] == "value_error":
            continue  # a model-level validator: callers report those themselves
        path = ".".join(str(p) for p in e["loc"])
        template = _MESSAGES.get(e["type"])
        msg = template.format(**e.get("ctx", {})) if template else e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        # Errors of a sub-model's own validator name their field first.
        if ": " in msg and msg.split(": ", 1)[0].replace(".", "").replace("_", "").isalnum():
            head, msg = msg.split(": ", 1)
            path = f"{path}.{head}" if path else head
        out.append((path, msg))
    return out


class FileConfigError(ConfigError):
    """A configuration file with problems; ``str()`` gives one line per problem."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        Exception.__init__(self, "\n".join(f"{source}: {p}: {m}" if p else f"{source}: {m}"
                                           for p, m in problems))
        self.field = problems[0][0] if problems else ""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerSection(_Strict):
    """Where and how the websocket endpoint listens."""

    host: str = "127.0.0.1"
    port: int = Field(9000, ge=0, le=65535)
    max_frame_bytes: int = Field(65536, gt=0)
    """Frames larger than this close the connection (1009)."""
    response_timeout_s: float = Field(30.0, gt=0)


class ControlSection(_Strict):
    """Smart charging."""

    strategy: str = "uncontrolled"
    interval_s: float = Field(60.0, gt=0)
    charging_rate_unit: Literal["W", "A"] = "W"

    @field_validator("strategy")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in strategy_names():
            raise ValueError(f"unknown strategy {v!r}; known: {', '.join(strategy_names())}")
        return v


class OCPPSection(_Strict):
    """Protocol settings."""

    heartbeat_interval_s: int = Field(300, gt=0)


class TariffSection(_Strict):
    """Prices for charge detail records."""

    energy_per_kwh: float = Field(0.30, ge=0)
    time_per_hour: float = Field(0.0, ge=0)
    session_fee: float = Field(0.0, ge=0)
    currency: str = Field("EUR", min_length=3, max_length=3)


class SiteSection(_Strict):
    """A site and its import limit for EV charging."""

    name: str = Field(min_length=1)
    limit_kw: float | None = Field(None, gt=0)


class StationSection(_Strict):
    """A station the CSMS accepts."""

    id: str = Field(min_length=1, max_length=48, pattern=r"^[^:/]+$")
    """OCPP-J identity: at most 48 characters, no ':'."""
    site: str = "default"
    evse_max_kw: list[float] = Field(default_factory=lambda: [11.0], min_length=1)
    """Hardware limit of each EVSE (connector) in kW; EVSE ids are 1, 2, ..."""
    phases: Literal[1, 3] = 3


class TokensSection(_Strict):
    """Id tokens (RFID uids, contract ids) the CSMS accepts."""

    accepted: list[str] = Field(default_factory=list)


class ServeConfig(_Strict):
    """The whole file."""

    server: ServerSection = ServerSection()
    control: ControlSection = ControlSection()
    ocpp: OCPPSection = OCPPSection()
    tariff: TariffSection = TariffSection()
    sites: list[SiteSection] = Field(default_factory=list)
    stations: list[StationSection] = Field(default_factory=list)
    tokens: TokensSection = TokensSection()

    def csms_config(self) -> CSMSConfig:
        """The core's configuration."""
        return CSMSConfig(
            stations=tuple(StationSpec(s.id, s.site, tuple(
                EvseSpec(i + 1, kw * 1000.0, s.phases) for i, kw in enumerate(s.evse_max_kw)))
                for s in self.stations),
            sites=tuple(SiteSpec(s.name, s.limit_kw) for s in self.sites),
            id_tokens=frozenset(self.tokens.accepted),
            strategy=self.control.strategy,
            control_interval_s=self.control.interval_s,
            charging_rate_unit=self.control.charging_rate_unit,
            heartbeat_interval_s=self.ocpp.heartbeat_interval_s,
            tariff=Tariff(self.tariff.energy_per_kwh, self.tariff.time_per_hour,
                          self.tariff.session_fee, self.tariff.currency),
        )


def _cross_problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    problems = []
    stations = data.get("stations")
    if isinstance(stations, list):
        ids = [s.get("id") for s in stations if isinstance(s, dict)]
        dupes = sorted({i for i in ids if isinstance(i, str) and ids.count(i) > 1})
        if dupes:
            problems.append(("stations", f"duplicate station ids {dupes}"))
    return problems


def load_config(path: str | Path | None) -> ServeConfig:
    """Read and validate a CSMS config file (None gives the defaults)."""
    if path is None:
        return ServeConfig()
    source = str(path)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileConfigError(source, [("", "file not found")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise FileConfigError(source, [("", f"TOML syntax error: {exc}")]) from None
    problems = _cross_problems(data)
    try:
        config = ServeConfig.model_validate(data)
    except ValidationError as err:
        raise FileConfigError(source, validation_problems(err) + problems) from None
    if problems:
        raise FileConfigError(source, problems)
    return config
