"""What a user can get wrong starting the CSMS, and how ``csms serve`` stops.

``evtwin csms serve`` on a busy or impossible port, an unknown host or a database
it cannot write; ``csms hash-password`` with nothing to read; ``sweep --scheduler``
at something that is not a Dask scheduler. Each ends in one ``error:`` line that
names the address, port, file or option, exit 2, no traceback and no new database
file. Ctrl-C stops ``csms serve`` with exit 130 and the database closed.

The ``csms`` commands run as real processes (they start in about a second: no
twin imported); the scheduler probe is called directly, with short timeouts.
"""

from __future__ import annotations

import contextlib
import io
import os
import pty
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from evtwin.csms.api import generate_token, hash_token
from evtwin.csms.exceptions import ConfigError
from evtwin.csms.security import hash_password_command
from evtwin.sim.exceptions import SweepError

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "scenarios" / "demo.toml")
#: Scales every wait of this module (a loaded CI machine).
TIMEOUT_SCALE = float(os.environ.get("EVTWIN_TEST_TIMEOUT_SCALE", "1"))


def evtwin(*args: str, input: str | None = None, cwd: Path | None = None,
           preexec_fn: Callable[[], object] | None = None
           ) -> subprocess.CompletedProcess[str]:
    """``evtwin ARGS`` as a process in its own session (no terminal), finished; stdin
    is ``input``, else empty."""
    return subprocess.run([sys.executable, "-m", "evtwin.sim.cli", *args], cwd=cwd,
                          input=input, stdin=subprocess.DEVNULL if input is None else None,
                          capture_output=True, text=True, timeout=60 * TIMEOUT_SCALE,
                          start_new_session=True, preexec_fn=preexec_fn)


def one_error_line(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """The one ``error:`` line of a refused command (exit 2), holding every word."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for word in words:
        assert word in line, (word, line)
    return line


@pytest.fixture()
def busy_port() -> Iterator[int]:
    """A loopback port another socket listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture()
def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- csms serve: ports, hosts, databases --------------------------------------------------
@pytest.mark.slow
def test_busy_port_names_address_and_leaves_no_database(busy_port: int, tmp_path: Path
                                                        ) -> None:
    proc = evtwin("csms", "serve", "--port", str(busy_port), "--db", str(tmp_path / "c.sqlite"))
    line = one_error_line(proc, f"127.0.0.1:{busy_port}", "in use")
    assert "port" in line
    assert files(tmp_path) == []  # the database it made for this start is gone again


@pytest.mark.slow
def test_busy_api_port(busy_port: int, tmp_path: Path) -> None:
    config = tmp_path / "csms.toml"
    config.write_text(f'[api]\ntoken_hash = "{hash_token(generate_token())}"\n',
                      encoding="utf-8")
    proc = evtwin("csms", "serve", "--port", "0", "--api-port", str(busy_port), "--config",
                  str(config), "--db", str(tmp_path / "c.sqlite"))
    line = one_error_line(proc, f"127.0.0.1:{busy_port}", "api_port", "operator API")
    assert "in use" in line
    assert files(tmp_path) == ["csms.toml"]


@pytest.mark.parametrize(("option", "value"), [("--port", "70000"), ("--port", "-1"),
                                               ("--api-port", "70000"),
                                               ("--api-port", "-1")])
@pytest.mark.slow
def test_port_out_of_range(option: str, value: str, tmp_path: Path) -> None:
    args = ["--port", "0"] if option != "--port" else []
    proc = evtwin("csms", "serve", *args, option, value, "--db", str(tmp_path / "c.sqlite"))
    one_error_line(proc, option, value, "65535")
    assert files(tmp_path) == []


@pytest.mark.slow
def test_api_port_without_token_hash_says_how_to_make_one(tmp_path: Path) -> None:
    proc = evtwin("csms", "serve", "--port", "0", "--api-port", "0", "--db",
                  str(tmp_path / "c.sqlite"))
    one_error_line(proc, "--api-port", "token_hash", "evtwin csms api-token")
    assert files(tmp_path) == []


@pytest.mark.parametrize("host", ["999.1.1.1", "no-such-host.invalid"])
@pytest.mark.slow
def test_bad_host(host: str, tmp_path: Path) -> None:
    proc = evtwin("csms", "serve", "--port", "0", "--host", host, "--db",
                  str(tmp_path / "c.sqlite"))
    one_error_line(proc, "host", host)
    assert files(tmp_path) == []


def _folder(tmp: Path) -> str:
    return str(tmp)


def _missing_folder(tmp: Path) -> str:
    return str(tmp / "nope" / "c.sqlite")


def _not_a_database(tmp: Path) -> str:
    (tmp / "notes.sqlite").write_text("not a database, only words\n" * 10, encoding="utf-8")
    return str(tmp / "notes.sqlite")


@pytest.mark.parametrize(("make_db", "words"), [
    (lambda tmp: "/proc/evtwin-test.sqlite", ["/proc/evtwin-test.sqlite", "writable"]),
    (_folder, ["is a folder"]),
    (_missing_folder, ["does not exist", "nope"]),
    (_not_a_database, ["notes.sqlite", "not a SQLite database"]),
], ids=["proc", "a folder", "missing folder", "not a database"])
@pytest.mark.slow
def test_unusable_database(make_db: Callable[[Path], str], words: list[str], tmp_path: Path
                           ) -> None:
    db = make_db(tmp_path)
    before = files(tmp_path)
    proc = evtwin("csms", "serve", "--port", "0", "--db", db)
    line = one_error_line(proc, "db", *words)
    assert db in line
    assert files(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_database_in_a_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        proc = evtwin("csms", "serve", "--port", "0", "--db", str(folder / "c.sqlite"))
    finally:
        folder.chmod(0o755)
    one_error_line(proc, str(folder / "c.sqlite"), "writable")
    assert files(folder) == []


# -- csms serve: Ctrl-C ---------------------------------------------------------------------
def start_serve(db: Path, *extra: str) -> subprocess.Popen[str]:
    """``csms serve`` on a free port, returned once it logged ``listening``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "evtwin.sim.cli", "csms", "serve", "--port", "0", "--db",
         str(db), *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Default Ctrl-C handling in the child, whatever pytest does with SIGINT.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30 * TIMEOUT_SCALE
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if '"listening"' in line:
            return proc
    proc.kill()
    proc.communicate()
    raise AssertionError(f"csms serve did not start: {''.join(lines)}")


def stop(proc: subprocess.Popen[str], sig: signal.Signals) -> tuple[int, str, float]:
    """Send ``sig``; the exit status, the rest of stderr and the seconds it took."""
    t = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30 * TIMEOUT_SCALE)
    return proc.returncode, err, time.monotonic() - t


@pytest.mark.slow
def test_ctrl_c_stops_serve_with_130_and_closes_the_database(tmp_path: Path) -> None:
    db = tmp_path / "csms.sqlite"
    proc = start_serve(db)
    code, err, took_s = stop(proc, signal.SIGINT)
    assert code == 130, err
    assert "Traceback" not in err
    assert took_s < 2.0 * TIMEOUT_SCALE
    assert '"event": "stopped"' in err and '"signal": "SIGINT"' in err
    # Closed, not locked or half written: a second server opens the same file.
    again = start_serve(db)
    code, err, _ = stop(again, signal.SIGTERM)
    assert code == 0, err  # a service manager's stop is a clean exit
    assert "Traceback" not in err


# -- csms hash-password: nothing to hash -----------------------------------------------------
@pytest.mark.parametrize("text", ["", "\n"], ids=["end of input", "empty line"])
def test_hash_password_stdin_without_a_password(text: str) -> None:
    proc = evtwin("csms", "hash-password", "--stdin", input=text)
    one_error_line(proc, "password", "stdin", "--generate")


def test_hash_password_stdin_closed() -> None:
    proc = evtwin("csms", "hash-password", "--stdin", preexec_fn=lambda: os.close(0))
    one_error_line(proc, "password", "stdin")


def test_hash_password_without_a_terminal_does_not_read_stdin() -> None:
    # getpass would fall back to stdin and echo the password; it is refused instead.
    proc = evtwin("csms", "hash-password", input="0123456789abcdef\n0123456789abcdef\n")
    one_error_line(proc, "password", "terminal", "--stdin")
    assert "0123456789abcdef" not in proc.stdout + proc.stderr


def test_hash_password_end_of_input_at_the_prompt() -> None:
    # A terminal (a pty) on which the user presses Ctrl-D at the first prompt.
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "evtwin.sim.cli", "csms",
                                 "hash-password"], stdin=slave, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        os.close(slave)
        assert proc.stderr is not None
        prompt = ""
        while "password" not in prompt.lower():
            chunk = proc.stderr.read(1)
            assert chunk, "no prompt"
            prompt += chunk
        os.write(master, b"\x04")  # Ctrl-D: end of input
        out, err = proc.communicate(timeout=30 * TIMEOUT_SCALE)
    finally:
        os.close(master)
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "end of input" in errors[0], err
    assert out == ""


def test_hash_password_command_turns_eof_into_a_config_error() -> None:
    def eof(_: str) -> str:
        raise EOFError

    with pytest.raises(ConfigError, match="end of input"):
        hash_password_command(prompt=eof)
    with pytest.raises(ConfigError, match="stdin"):
        hash_password_command(stdin=io.StringIO(""))


# -- sweep --scheduler: something that is not a Dask scheduler -------------------------------
class FakeServer:
    """A loopback TCP server that answers every connection with ``reply(conn)``."""

    def __init__(self, reply: Callable[[socket.socket], None]) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = int(self.sock.getsockname()[1])
        self.reply = reply
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._reply, args=(conn,), daemon=True).start()

    def _reply(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the client hung up first
            self.reply(conn)

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.sock.close()


def _garbage(conn: socket.socket) -> None:
    conn.sendall(b"garbage garbage garbage\r\n" * 4)


def _http(conn: socket.socket) -> None:
    # A web server: waits for a request, and Dask's client sends none first.
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


def _hang_up(conn: socket.socket) -> None:
    conn.close()


@pytest.fixture(params=[_garbage, _http, _hang_up], ids=["garbage", "http", "hangs up"])
def not_a_scheduler(request: pytest.FixtureRequest) -> Iterator[int]:
    server = FakeServer(request.param)
    yield server.port
    server.close()


@pytest.mark.slow
def test_probe_refuses_what_is_not_a_scheduler(not_a_scheduler: int) -> None:
    from evtwin.sim.sweep import probe_scheduler

    address = f"tcp://127.0.0.1:{not_a_scheduler}"
    t = time.monotonic()
    with pytest.raises(SweepError, match="not a Dask scheduler") as info:
        probe_scheduler(address, timeout_s=1.0)
    assert time.monotonic() - t < 3.0 * TIMEOUT_SCALE
    assert address in str(info.value)


def test_probe_nobody_listens_is_immediate(closed_port: int) -> None:
    from evtwin.sim.sweep import probe_scheduler

    t = time.monotonic()
    with pytest.raises(SweepError, match="nothing listens") as info:
        probe_scheduler(f"tcp://127.0.0.1:{closed_port}", timeout_s=5.0)
    assert time.monotonic() - t < 1.0 * TIMEOUT_SCALE
    assert f"127.0.0.1:{closed_port}" in str(info.value)


@pytest.mark.parametrize("address", ["http://127.0.0.1:8786", "tcp://127.0.0.1:notaport"])
def test_probe_not_an_address(address: str) -> None:
    from evtwin.sim.sweep import probe_scheduler

    with pytest.raises(SweepError, match="not a Dask address") as info:
        probe_scheduler(address)
    assert address in str(info.value)


def test_probe_accepts_a_real_scheduler() -> None:
    from distributed import LocalCluster

    from evtwin.sim.sweep import probe_scheduler

    with LocalCluster(n_workers=0, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        probe_scheduler(cluster.scheduler_address, timeout_s=5.0 * TIMEOUT_SCALE)


@pytest.mark.slow
def test_sweep_at_garbage_is_one_line_not_exabytes(tmp_path: Path) -> None:
    server = FakeServer(_garbage)
    try:
        proc = evtwin("sweep", DEMO, "--set", "ev.count=4,6", "--scheduler",
                      f"tcp://127.0.0.1:{server.port}", "--out", str(tmp_path / "sw"),
                      "--quiet", cwd=tmp_path)
    finally:
        server.close()
    one_error_line(proc, f"--scheduler tcp://127.0.0.1:{server.port}", "not a Dask scheduler")
