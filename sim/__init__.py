"""evtwin.sim: clock and co-simulation runner, scenario model, results, CLI.

The runner and the scenario model import the whole twin (agents, grid model,
pandas); they are imported on first use (module ``__getattr__``), so the CLI's
``evtwin csms serve`` starts without them.
"""

import importlib
from typing import TYPE_CHECKING, Any

from .exceptions import RunError, ScenarioError, SimError

if TYPE_CHECKING:
    from .runner import RunResult, Twin, run_scenario
    from .scenario import Scenario, load_scenario, parse_scenario

__all__ = ["RunError", "RunResult", "Scenario", "ScenarioError", "SimError", "Twin",
           "load_scenario", "parse_scenario", "run_scenario"]

#: Where each lazily imported public name lives (submodule of this package).
_SOURCES: dict[str, str] = {
    "RunResult": "runner", "Twin": "runner", "run_scenario": "runner",
    "Scenario": "scenario", "load_scenario": "scenario", "parse_scenario": "scenario",
}


def __getattr__(name: str) -> Any:
    """Import a public name's submodule on first use (PEP 562)."""
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names, the lazy public ones included."""
    return sorted(set(globals()) | set(__all__))
