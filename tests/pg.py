"""A throwaway PostgreSQL server for tests, from the distribution's packages.

``postgres_server()`` runs ``initdb`` in a fresh directory and starts the
server on 127.0.0.1 at a free port (trust authentication, loopback only),
yields its ``postgresql://`` URL and stops it afterwards. As root (CI), the
server runs as the ``postgres`` system user, which refuses to run as root.

Without PostgreSQL installed the tests that need it are skipped with the
reason, unless ``EVTWIN_REQUIRE_POSTGRES=1`` (set by ``.ci/run``) makes that
a failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_postgres() -> tuple[str, str]:
    """Paths of initdb and pg_ctl, or skip (fail under EVTWIN_REQUIRE_POSTGRES=1)."""
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        reason = "PostgreSQL server not installed (apt-get install postgresql)"
        if os.environ.get("EVTWIN_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return initdb, pg_ctl


@contextmanager
def postgres_server() -> Iterator[str]:
    """A running PostgreSQL server; yields ``postgresql://evtwin@127.0.0.1:PORT/postgres``."""
    initdb, pg_ctl = require_postgres()
    root = Path(tempfile.mkdtemp(prefix="evtwin-pg-"))
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root: as the package's system user.
        try:
            shutil.chown(root, "postgres", "postgres")
        except LookupError:
            shutil.rmtree(root, ignore_errors=True)
            reason = "PostgreSQL's system user 'postgres' is missing (reinstall postgresql)"
            if os.environ.get("EVTWIN_REQUIRE_POSTGRES") == "1":
                pytest.fail(reason)
            pytest.skip(reason)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    log = root / "server.log"
    try:
        subprocess.run([*as_user, initdb, "-D", str(data), "-U", "evtwin", "-A", "trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
             f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off "
             "-c max_connections=50", "start"], check=True, capture_output=True)
        yield f"postgresql://evtwin@127.0.0.1:{port}/postgres"
    finally:
        if data.exists():
            subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w",
                            "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
