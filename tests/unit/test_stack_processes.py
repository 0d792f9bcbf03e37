"""How scripts/stack.py finds and stops the stack's processes (psutil): a service is its whole
process tree, a task process in a process group of its own included; one that ignores SIGTERM
is killed; a zombie or a process with another command line does not count as the service; and
``stack.py down`` stops a service by its pid file and removes the file."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import stack

# A "service": a parent in a session of its own (as the stack starts them) with a child that
# moved to a process group of its own (as Airflow's task processes do), which prints its pid.
SERVICE = """
import os, signal, subprocess, sys, time
if "ignore-term" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if "child" in sys.argv:
    os.setpgid(0, 0)
    print(os.getpid(), flush=True)
else:
    subprocess.Popen([sys.executable, __file__, "child", *sys.argv[1:]])
time.sleep(120)
"""


def _service(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, list[int]]:
    script = tmp_path / "service.py"
    script.write_text(SERVICE)
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE,
                            start_new_session=True, text=True)
    return proc, [proc.pid, int(proc.stdout.readline())]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_service_stops_with_its_whole_tree(tmp_path: Path) -> None:
    proc, pids = _service(tmp_path)
    assert psutil.Process(pids[1]).ppid() == proc.pid  # a descendant, in another group
    assert stack.stop_group(proc.pid, timeout=10) == "stopped"
    assert all(_gone(pid) for pid in pids)
    assert proc.wait(timeout=5) == -signal.SIGTERM  # left for its Popen to reap


def test_what_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    proc, pids = _service(tmp_path, "ignore-term")
    began = time.monotonic()
    assert stack.stop_group(proc.pid, timeout=0.5) == "killed"
    assert all(_gone(pid) for pid in pids) and time.monotonic() - began < 8
    assert stack.stop_group(proc.pid) == "stopped"  # nothing left: at once


def test_pid_alive_wants_a_live_process_with_the_marker() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "print(1, flush=True); import time; "
                             "time.sleep(60)", "weed"], stdout=subprocess.PIPE)
    try:
        proc.stdout.readline()  # started
        assert stack.pid_alive(proc.pid) and stack.pid_alive(proc.pid, "weed")
        assert not stack.pid_alive(proc.pid, "mlflow")  # the pid is someone else's now
        proc.kill()
        deadline = time.monotonic() + 5
        while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not stack.pid_alive(proc.pid, "weed")  # exited, not reaped yet
    finally:
        proc.kill()
        proc.wait()


def test_down_stops_a_service_by_its_pid_file(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    local = stack.LocalStack(tmp_path, s3_port=1, mlflow_port=2, airflow_port=3)
    proc, pids = _service(tmp_path, "weed")  # "weed" in its command line: seaweedfs's marker
    local.pid_file("seaweedfs").parent.mkdir(parents=True)
    local.pid_file("seaweedfs").write_text(f"{proc.pid}\n")
    local.pid_file("mlflow").write_text(f"{proc.pid}\n")  # not an mlflow process: not ours
    assert stack.read_pid(local, "seaweedfs") == proc.pid
    assert stack.read_pid(local, "mlflow") is None
    stack.down(local, ["seaweedfs", "mlflow"])
    out = capsys.readouterr().out
    assert f"seaweedfs      stopped  pid {proc.pid}" in out and "mlflow         not running" in out
    assert all(_gone(pid) for pid in pids)
    assert not local.pid_file("seaweedfs").exists() and not local.pid_file("mlflow").exists()
    proc.wait(timeout=5)


def test_the_compose_host_scripts_import_with_the_standard_library_only() -> None:
    """./deploy.sh compose runs stack.py (secrets), build_images.py and backup.py with the host's
    bare Python before any venv exists: ``-S`` leaves site-packages (psutil, requests...) out."""
    scripts = Path(__file__).resolve().parents[2] / "scripts"
    for module in ("stack", "build_images", "backup"):
        code = f"import sys; sys.path.insert(0, {str(scripts)!r}); import {module}"
        done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, f"{module}: {done.stderr}"
