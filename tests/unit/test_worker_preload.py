"""The scheduler's task workers import what the stages import once, before any fork: the list
is derived from the code, and importing it is fork-safe (plugins/mlops_airflow/worker_preload.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from mlops_airflow.worker_preload import (
    AIRFLOW_TASK_MODULES,
    NATIVE_POOLS,
    NOT_PRELOADED,
    WARMUP_MODULE,
    locate,
    preload_modules,
)

REPO = Path(__file__).resolve().parents[2]


def test_the_list_holds_what_the_stages_import_inside_execute() -> None:
    modules = preload_modules()
    # Imported inside functions only (DAG files parse without them): found all the same.
    for name in ("pandas", "sklearn.ensemble", "sklearn.pipeline", "great_expectations",
                 "mlflow", "skops.io", "pyarrow.parquet", "pydantic", "boto3"):
        assert name in modules, name
    assert set(AIRFLOW_TASK_MODULES) <= set(modules)
    # The project's own modules are found through, never preloaded: a changed stage takes
    # effect at the next task without a scheduler restart.
    assert not [m for m in modules if m.startswith(("include.", "mlops_airflow."))
                and m != WARMUP_MODULE]
    assert modules[-1] == WARMUP_MODULE
    # No standard library, no class imported by name, nothing excluded, no duplicates.
    assert not {"json", "os", "typing", "__future__"} & set(modules)
    assert "mlflow.entities.Metric" not in modules
    assert not [m for m in modules if m.split(".")[0] in NOT_PRELOADED]
    assert len(modules) == len(set(modules))


def test_libraries_come_before_airflow_and_the_project() -> None:
    """skops scans the loaded modules when it is imported: Airflow's deprecated attributes must
    not be loaded yet, or each would warn in the scheduler's log."""
    modules = preload_modules()[:-1]  # the warm-up module is last
    kinds = [1 if m.startswith("airflow") else 0 for m in modules]
    assert kinds == sorted(kinds)
    assert modules.index("skops.io") < modules.index("airflow.executors.local_executor")


def test_the_list_follows_only_what_the_dags_reach(tmp_path: Path) -> None:
    """Derived, not typed: a DAG folder that reaches no stage preloads no ML library."""
    (tmp_path / "only_assets.py").write_text("from mlops_airflow.assets import DRIFT_DETECTED\n")
    modules = preload_modules(tmp_path)
    assert "airflow.sdk" in modules  # what mlops/assets.py imports
    assert "pandas" not in modules and "mlflow" not in modules
    (tmp_path / "stages.py").write_text("from mlops_airflow.operators.training import IngestOperator\n")
    assert "sklearn.ensemble" in preload_modules(tmp_path)


def test_locate_finds_modules_without_importing_them() -> None:
    code = (f"import sys; sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'plugins')!r}]; "
            "from mlops_airflow.worker_preload import locate; "
            "found = [str(locate(n)) for n in ('sklearn.ensemble', 'pyarrow.parquet', "
            "'include.mlops_core.pipeline', 'mlflow.entities.Metric', 'no_such_module')]; "
            "print(found); assert 'sklearn' not in sys.modules and 'pyarrow' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "sklearn/ensemble/__init__.py" in result.stdout
    assert "include/mlops_core/pipeline.py" in result.stdout
    assert result.stdout.count("None") == 2
    assert locate("evidently") is not None  # excluded by choice, not because it is missing


FORK_CHECK = textwrap.dedent("""
    import importlib, json, os, socket, sys, threading
    sys.path[:0] = [{repo!r}, {plugins!r}]
    from mlops_airflow.worker_preload import NATIVE_POOLS, preload_modules

    def os_threads():
        return len(os.listdir("/proc/self/task"))

    def sockets():
        found = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{{fd}}")
            except OSError:
                continue
            if target.startswith(("socket:", "anon_inode:[eventpoll]")):
                found.append(target)
        return found

    report = {{"threads_by": {{}}, "sockets_by": {{}}}}
    for name in NATIVE_POOLS:
        importlib.import_module(name)
    report["native"] = os_threads()
    before = sockets()
    for name in preload_modules():
        threads, socks = os_threads(), len(sockets())
        importlib.import_module(name)
        if os_threads() != threads:
            report["threads_by"][name] = os_threads() - threads
        if len(sockets()) != socks:
            report["sockets_by"][name] = len(sockets()) - socks
    report["python_threads"] = [t.name for t in threading.enumerate()]
    report["sockets"] = sorted(set(sockets()) - set(before))

    # A child forked now, as each task worker is, uses the native pools and the libraries.
    pid = os.fork()
    if pid == 0:
        import signal
        signal.alarm(120)  # a deadlocked pool must fail the test, not hang it
        import io
        import numpy as np, pandas as pd, pyarrow as pa, pyarrow.parquet as pq
        from scipy.linalg import solve
        from sklearn.linear_model import LogisticRegression
        a = np.random.default_rng(0).random((400, 400))
        assert np.isfinite(a @ a).all() and np.isfinite(solve(a + 400 * np.eye(400), a)).all()
        frame = pd.DataFrame({{"x": np.arange(50_000.0), "y": np.arange(50_000) % 2}})
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(frame), buffer)
        back = pq.read_table(io.BytesIO(buffer.getvalue())).to_pandas()
        assert back.equals(frame)
        LogisticRegression(max_iter=200).fit(frame[["x"]] / 50_000, frame["y"])
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    report["child_status"] = status
    print(json.dumps(report))
""")


def test_importing_the_list_starts_no_thread_and_opens_no_socket_and_forks_safely() -> None:
    """What the forkserver does before it forks each worker: import every module in the list.
    No module may start a Python thread, open a socket or an event loop (each forked task would
    share it), or start a native thread beyond the pools that stop around fork()
    (NATIVE_POOLS: OpenBLAS, jemalloc); a forked child then runs BLAS, Arrow and scikit-learn."""
    code = FORK_CHECK.format(repo=str(REPO), plugins=str(REPO / "plugins"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["threads_by"] == {}, f"native threads started at import: {report['threads_by']}"
    assert report["python_threads"] == ["MainThread"]
    assert report["sockets_by"] == {} and report["sockets"] == [], report
    assert report["child_status"] == 0, "the forked child failed or hung"
    assert NATIVE_POOLS  # the allowance above is named, not implicit


def test_the_excluded_module_is_excluded_for_the_reason_given() -> None:
    """evidently opens an event loop at import: the check above would fail with it."""
    code = textwrap.dedent("""
        import os, evidently
        found = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                found += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
            except OSError:  # the listing's own descriptor, closed by now
                pass
        print(found)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.strip().splitlines()[-1]) > 0
    assert "evidently" in NOT_PRELOADED
