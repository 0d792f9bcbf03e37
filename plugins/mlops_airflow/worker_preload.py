"""What the scheduler's task workers import once, before any task: the modules the DAGs and their
stages import, derived from the code rather than listed by hand.

The LocalExecutor (Airflow >= 3.3) starts its workers from a ``forkserver`` process when
``[scheduler] mp_start_method = forkserver``; ``[scheduler] mp_forkserver_preload`` names the
modules that process imports once. Each worker is forked from it, and each task is forked from a
worker, so a task starts with pandas, scikit-learn, MLflow, Great Expectations and the other
libraries its stage uses already imported instead of paying 2-8 s to import them again in a fresh
process
(docs/benchmarks.md, "Training DAG through the scheduler").

The list is every library module reachable from ``dags/*.py`` through the project's own modules
(``include.mlops_core.*``, ``mlops.*``), following imports at module level *and* inside functions
(the stages import their heavy libraries inside ``execute()`` so that DAG files parse fast). No
module here is imported to compute it: the files are read with :mod:`ast`
(:func:`include.mlops_core.sources.imported_names`) and located on disk.

The project's own modules are followed but not preloaded: each task imports them from disk
(about 50 ms), so a changed stage or a ``git pull`` takes effect at the next task, as without a
preload, and the code that trains a model is always the code its source hash was computed
from. Upgrading a *library* needs a scheduler restart (the workers keep what they imported).

Fork safety (tests/unit/test_worker_preload.py): importing the list starts no Python thread and
opens no socket; the native thread pools some libraries start at load (OpenBLAS, jemalloc) shut
down around ``fork()`` through ``pthread_atfork``, and a test forks a preloaded process and uses
them in the child.

No Airflow import: ``scripts/stack.py`` calls this to write the setting.
"""

from __future__ import annotations

import sys
from importlib.machinery import EXTENSION_SUFFIXES, PathFinder
from pathlib import Path

from include.mlops_core.sources import imported_names

REPO = Path(__file__).resolve().parent.parent.parent
PROJECT_PACKAGES = ("include.mlops_core", "mlops_airflow")
# What every task process runs besides the DAG's own imports: the worker loop, the supervisor
# that forks the task, the task runner inside it and the DagBag it parses the DAG file with
# (0.2 s per task when imported there).
AIRFLOW_TASK_MODULES = ("airflow.executors.local_executor", "airflow.sdk.execution_time.supervisor",
                        "airflow.sdk.execution_time.task_runner", "airflow.dag_processing.dagbag")
# Modules the libraries import lazily inside the calls the stages make (no import statement of
# ours names them): what `PYTHONPROFILEIMPORTTIME=1 python bench/scheduler_bench.py` showed each
# task importing, 10-100 ms each. A module missing here costs its import in each task, nothing else.
LIBRARY_RUNTIME_MODULES = (
    "boto3.s3.transfer",  # ObjectStore uploads
    "git",  # MLflow's source-version lookup at run creation
    "jinja2.ext",  # Airflow's template rendering
    "mlflow.pyfunc.loaders",  # mlflow.sklearn.log_model
    "mlflow.tracing.processor.base_mlflow",  # MlflowClient's first call
    "mlflow.tracking.request_header.registry",  # every MLflow REST call
    "narwhals._pandas_like.namespace",  # MLflow's dataset logging
    "pyarrow.dataset",  # Parquet reads
)
# Imported last: warms, once, what every task would otherwise build for itself and what is safe
# to share across forks (botocore's S3 service model); see its docstring.
WARMUP_MODULE = "mlops_airflow.worker_warmup"
# Imported by a stage, but not safe to import before a fork; the tasks that use it import it.
NOT_PRELOADED = {
    "evidently": "creates an asyncio event loop (a socket pair and a thread object) at import "
                 "(evidently.legacy.utils.sync), which every forked task would share",
}
# Libraries whose native thread pools start when they load and stop and restart around fork()
# through pthread_atfork: OpenBLAS (numpy's and scipy's) and jemalloc (pyarrow's allocator).
# tests/unit/test_worker_preload.py allows these threads and no other.
NATIVE_POOLS = ("numpy", "pyarrow", "scipy.linalg")


def locate(name: str, path: list[str] | None = None) -> Path | None:
    """The file (or namespace folder) of module ``name`` on ``path`` (default ``sys.path``),
    found without importing anything; None when there is no such module."""
    head, *rest = name.split(".")
    spec = PathFinder.find_spec(head, path)
    if spec is None:
        return None
    found = Path(spec.origin) if spec.has_location and spec.origin else None
    locations = [Path(p) for p in spec.submodule_search_locations or []]
    if found is None and locations:
        found = locations[0]
    for part in rest:
        found, folders = None, locations
        locations = []
        for folder in folders:
            candidates = [folder / part / "__init__.py",
                          *(folder / f"{part}{suffix}" for suffix in (".py", *EXTENSION_SUFFIXES))]
            found = next((c for c in candidates if c.is_file()), None)
            if found is not None:
                locations = [folder / part] if found.name == "__init__.py" else []
                break
            if (folder / part).is_dir():  # a namespace package
                found, locations = folder / part, [folder / part]
                break
        if found is None:
            return None
    return found


def _is_project(name: str) -> bool:
    return any(name == p or name.startswith(f"{p}.") for p in PROJECT_PACKAGES)


def preload_modules(dags_folder: Path | None = None) -> list[str]:
    """Every library module the DAG files in ``dags_folder`` (default: the project's ``dags/``)
    reach through the project's modules; the project's own modules, the standard library (the
    interpreter has most of it already) and :data:`NOT_PRELOADED` left out; the warm-up module
    last. Ordered libraries, then Airflow, sorted within each, so the setting is stable."""
    sources = [*sorted((dags_folder or REPO / "dags").glob("*.py"))]
    seen_sources: set[Path] = set()
    found: set[str] = {*AIRFLOW_TASK_MODULES, *LIBRARY_RUNTIME_MODULES}
    while sources:
        source = sources.pop()
        if source in seen_sources:
            continue
        seen_sources.add(source)
        for name in imported_names(source):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top == "__future__" or top in NOT_PRELOADED:
                continue
            where = locate(name)
            if where is None:  # a class or function imported by name, not a module
                continue
            found.add(name)
            if _is_project(name) and where.suffix == ".py":
                sources.append(where)
    # Libraries first, Airflow next: skops scans every loaded module for its types when it is
    # imported, and Airflow's deprecated module attributes would each warn.
    def order(name: str) -> tuple[int, str]:
        return (1 if name.split(".")[0] == "airflow" else 0, name)

    return [*sorted((n for n in found if not _is_project(n)), key=order), WARMUP_MODULE]


def preload_setting(dags_folder: Path | None = None) -> str:
    """``[scheduler] mp_forkserver_preload``: the list, comma-separated."""
    return ",".join(preload_modules(dags_folder))
