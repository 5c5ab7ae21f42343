"""Background processes with pid files: start, find, stop, even after a crash."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


class LaunchError(RuntimeError):
    """A component could not be started; the message says what to do."""


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        zombie = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")
        threads = sum(1 for _ in Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return False
    # A zombie leader has exited and waits to be reaped, but its other threads may still be
    # tearing down and holding the process's files (a listening socket among them).
    return not zombie or threads > 1


class ProcessManager:
    def __init__(self, run_dir: Path, log_dir: Path) -> None:
        self.run_dir = run_dir
        self.log_dir = log_dir

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def running_pid(self, name: str) -> int | None:
        """The live pid of ``name``; removes a stale pid file left by a crash."""
        path = self.pid_file(name)
        try:
            pid = int(path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if pid_alive(pid):
            return pid
        path.unlink(missing_ok=True)
        return None

    def start(self, name: str, cmd: list[str], env: dict[str, str], port: int | None) -> int:
        if (pid := self.running_pid(name)) is not None:
            return pid
        if port is not None and port_open(port):
            raise LaunchError(
                f"{name}: port {port} on 127.0.0.1 is already in use by another process; "
                f"stop it (e.g. `ss -ltnp 'sport = :{port}'` shows which) or run `billing down`"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file(name).open("ab") as log:
            proc = subprocess.Popen(
                cmd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file(name).write_text(str(proc.pid))
        return proc.pid

    def stop(self, name: str, timeout: float = 15.0) -> bool:
        """SIGTERM the process group, SIGKILL what is left after ``timeout``."""
        pid = self.running_pid(name)
        if pid is None:
            return False
        _signal_group(pid, signal.SIGTERM)
        if not wait_until(lambda: not pid_alive(pid), timeout):
            _signal_group(pid, signal.SIGKILL)
            wait_until(lambda: not pid_alive(pid), 5)
        self.pid_file(name).unlink(missing_ok=True)
        return True

    def tail(self, name: str, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file(name).read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
