"""evtwin.sim: clock and co-simulation runner, scenario model, results, CLI."""

from .exceptions import RunError, ScenarioError, SimError
from .runner import RunResult, Twin, run_scenario
from .scenario import Scenario, load_scenario, parse_scenario

__all__ = ["RunError", "RunResult", "Scenario", "ScenarioError", "SimError", "Twin",
           "load_scenario", "parse_scenario", "run_scenario"]
