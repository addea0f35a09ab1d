"""The live dashboard on a twin run (``evtwin run SCENARIO --dashboard PORT``).

The same app as ``evtwin csms serve``'s (:class:`evtwin.csms.dashboard.Dashboard`),
on the twin's in-process CSMS, with the twin's own power flow as the feeder view
(every bus voltage and line and transformer loading of the latest step) and the
run's progress. Who may log in: the users of ``--dashboard-users FILE`` (its
``[[dashboard.users]]``, as in a CSMS config; a ``csms.toml`` will do), or else
one admin made for this run alone, whose token and TOTP secret are printed
(they are in no file, and die with the run).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from evtwin.csms.config import (
    DashboardSection,
    FileConfigError,
    read_toml,
    validation_problems,
)
from evtwin.csms.dashboard import Dashboard, DashboardUser, grid_view, names, new_user
from evtwin.csms.privacy import pseudonymiser_for
from evtwin.csms.server import CSMSServer, check_port, listen_error

__all__ = ["TwinDashboard", "read_users", "run_admin"]


def read_users(path: str | Path) -> list[DashboardUser]:
    """The ``[[dashboard.users]]`` of a TOML file (a CSMS config's, or a file of only
    them); FileConfigError naming the file and field."""
    source = str(path)
    data, error = read_toml(path)
    if data is None:
        raise FileConfigError(source, [("", error)])
    section = data.get("dashboard")
    if not isinstance(section, dict) or "users" not in section:
        raise FileConfigError(source, [("dashboard.users", "required: the users who may "
                                                           "log in ([[dashboard.users]])")])
    try:
        d = DashboardSection.model_validate(section)
    except ValidationError as err:
        raise FileConfigError(source, [(f"dashboard.{p}" if p else "dashboard", m)
                                       for p, m in validation_problems(err)]) from None
    return [DashboardUser(u.name, u.token_hash, u.totp_secret, u.role) for u in d.users]


def run_admin() -> tuple[DashboardUser, list[str]]:
    """An admin for this run alone and the lines that tell the operator its login."""
    user, token, uri = new_user("admin", "admin", issuer="evtwin run")
    return user, [f"dashboard user: {user.name} (admin, this run only)",
                  f"dashboard token: {token}",
                  f"dashboard TOTP secret: {user.totp_secret}",
                  f"dashboard authenticator URI: {uri}"]


class TwinDashboard:
    """A twin companion (see ``Twin.companions``): the dashboard on the twin's CSMS.

    ``twin`` is the :class:`~evtwin.sim.runner.Twin`; ``say`` prints the address once
    it listens.
    """

    def __init__(self, twin: Any, *, users: list[DashboardUser], port: int = 0,
                 host: str = "127.0.0.1", say: Callable[[str], None] = print,
                 push_interval_s: float = 0.5) -> None:
        check_port(port, "--dashboard")
        self.twin = twin
        self.users = users
        self.host = host
        self.port = port
        self.say = say
        self.push_interval_s = push_interval_s
        self.dashboard: Dashboard | None = None
        feeder = twin.feeder
        net = feeder.net
        rows = [int(r) for r in feeder.monitored_bus_rows]
        bus_names = names(net.bus, "bus")  # net.bus's order is GridResult.bus_vm_pu's
        self._bus_rows = rows
        self._bus_names = [bus_names[r] for r in rows]
        self._line_names = names(net.line, "line")
        self._trafo_names = names(net.trafo, "trafo")

    def grid(self) -> dict[str, Any] | None:
        """The latest step's power flow as the dashboard shows it."""
        last = self.twin.last_grid
        if last is None:
            return None
        t_s, res = last
        limits = self.twin.feeder.limits
        return grid_view(self._bus_names, [float(res.bus_vm_pu[r]) for r in self._bus_rows],
                         self._line_names, res.line_loadings_percent,
                         self._trafo_names, res.trafo_loadings_percent,
                         v_min_pu=limits.v_min_pu, v_max_pu=limits.v_max_pu,
                         line_max_percent=limits.line_loading_max_percent,
                         trafo_max_percent=limits.trafo_loading_max_percent,
                         source="twin power flow",
                         at=self.twin.to_datetime(t_s).isoformat())

    def run(self) -> dict[str, Any]:
        """What the page says of the run: scenario, simulated time, progress, pace."""
        sc = self.twin.sc
        now_s = float(self.twin.env.now)
        return {"scenario": sc.name, "simulated_s": now_s,
                "progress_percent": round(100.0 * now_s / sc.duration_s, 1)
                if sc.duration_s else 100.0,
                "pace": self.twin.pace, "finished": now_s >= sc.duration_s}

    async def start(self, server: CSMSServer) -> None:
        """Serve the dashboard on ``server``'s CSMS (called by the twin)."""
        # With [roaming] the twin's CSMS is an OCPI CPO (started before this companion):
        # its partners are the dashboard's roaming partners.
        roaming = getattr(self.twin, "roaming", None)
        self.dashboard = Dashboard(server, users=self.users, host=self.host, port=self.port,
                                   grid=self.grid, run=self.run,
                                   partners=roaming.partners if roaming is not None else list,
                                   pseudonymiser=pseudonymiser_for(server.core.store),
                                   push_interval_s=self.push_interval_s)
        try:
            await self.dashboard.start()
        except OSError as exc:
            raise listen_error(exc, self.host, self.port, what="the dashboard",
                               port_field="--dashboard") from None
        self.say(f"dashboard: {self.dashboard.url}")

    async def stop(self) -> None:
        """Stop serving (the run ended)."""
        if self.dashboard is not None:
            await self.dashboard.stop()

