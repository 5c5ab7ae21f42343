"""ProcessManager with real short-lived child processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from billing_cli.procs import LaunchError, ProcessManager, pid_alive, port_open, wait_until

SLEEPER = [sys.executable, "-c", "import time; time.sleep(30)"]


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ProcessManager]:
    procs = ProcessManager(tmp_path / "run", tmp_path / "logs")
    yield procs
    procs.stop("sleeper", timeout=2)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_started_process_is_found_and_stopped(manager: ProcessManager) -> None:
    pid = manager.start("sleeper", SLEEPER, env={}, port=None)

    assert manager.running_pid("sleeper") == pid
    assert manager.pid_file("sleeper").read_text() == str(pid)

    assert manager.stop("sleeper") is True
    assert not pid_alive(pid)
    assert not manager.pid_file("sleeper").exists()
    assert manager.running_pid("sleeper") is None


def test_starting_a_running_process_returns_the_same_pid(manager: ProcessManager) -> None:
    pid = manager.start("sleeper", SLEEPER, env={}, port=None)

    assert manager.start("sleeper", SLEEPER, env={}, port=None) == pid


def test_stopping_what_is_not_running_returns_false(manager: ProcessManager) -> None:
    assert manager.stop("never-started") is False


def test_child_output_goes_to_its_log_file(manager: ProcessManager) -> None:
    cmd = [sys.executable, "-c", "print('hello from child', flush=True)"]
    pid = manager.start("echo", cmd, env={}, port=None)

    assert wait_until(lambda: not pid_alive(pid), 10)

    assert "hello from child" in manager.tail("echo")


def test_stale_pid_file_is_ignored_and_removed(manager: ProcessManager) -> None:
    manager.run_dir.mkdir(parents=True)
    manager.pid_file("ghost").write_text(str(_dead_pid()))

    assert manager.running_pid("ghost") is None
    assert not manager.pid_file("ghost").exists()


def test_garbage_pid_file_is_ignored(manager: ProcessManager) -> None:
    manager.run_dir.mkdir(parents=True)
    manager.pid_file("junk").write_text("not a pid")

    assert manager.running_pid("junk") is None


def test_start_on_a_busy_port_raises_launch_error(manager: ProcessManager) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        assert port_open(port)
        with pytest.raises(LaunchError, match=f"port {port}"):
            manager.start("sleeper", SLEEPER, env={}, port=port)

    assert not manager.pid_file("sleeper").exists()


def test_stop_kills_a_process_that_ignores_sigterm(manager: ProcessManager) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(30)"
    )
    pid = manager.start("sleeper", [sys.executable, "-c", code], env={}, port=None)
    assert wait_until(lambda: "ready" in manager.tail("sleeper"), 10)

    assert manager.stop("sleeper", timeout=0.5) is True
    assert not pid_alive(pid)


_THREADED_LISTENER = """
import socket, sys, threading, time
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen()
print(sock.getsockname()[1], flush=True)
for _ in range(8):
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
time.sleep(60)
"""


def _dead(pid: int) -> bool:
    return not pid_alive(pid)


def test_killed_multithreaded_process_is_alive_until_its_socket_is_closed() -> None:
    # The leader of a killed thread group shows as a zombie while its other threads still
    # exit and hold its files; "not alive" must mean the listening port is free.
    for _ in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", _THREADED_LISTENER], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        port = int(child.stdout.readline())
        os.kill(child.pid, signal.SIGKILL)
        assert wait_until(partial(_dead, child.pid), 5, interval=0.001)
        assert not port_open(port)
        child.wait()
