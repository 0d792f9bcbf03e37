"""The LocalExecutor, with its task workers' forkserver started with the scheduler.

With ``[scheduler] mp_start_method = forkserver`` (what ``./deploy.sh`` sets, scripts/stack.py
``scheduler_settings``), Airflow's LocalExecutor starts each worker from a forkserver process that
imported ``[scheduler] mp_forkserver_preload`` once (:mod:`mlops_airflow.worker_preload`): pandas,
scikit-learn, MLflow, Great Expectations and the other libraries the stages use. Python starts
that process at the first worker, so the first task after a scheduler start would wait for those
imports (about 8 s on a 2-core machine). This executor starts it when the scheduler starts and
waits for it, before any task is queued. Everything else is Airflow's LocalExecutor, unchanged.

    [core] executor = mlops_airflow.executor.PreloadedLocalExecutor
"""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing import forkserver

from airflow.executors.local_executor import LocalExecutor


class PreloadedLocalExecutor(LocalExecutor):
    """:class:`~airflow.executors.local_executor.LocalExecutor` whose forkserver (when that is
    the start method) is started, and its modules imported, in :meth:`start`."""

    def start(self) -> None:
        super().start()
        if multiprocessing.get_start_method() != "forkserver":
            return
        started = time.monotonic()
        forkserver.ensure_running()
        # ensure_running() returns before the preload is done; the first process forked from it
        # waits for it. Fork a no-op one now, so that is over before any task is queued (and
        # the preload does not compete for the CPU with the first task).
        probe = multiprocessing.Process(target=_ready, name="forkserver-ready")
        probe.start()
        probe.join(timeout=300)
        self.log.info("Task workers' forkserver ready in %.1f s", time.monotonic() - started)


def _ready() -> None:
    """Runs in the first process forked from the forkserver: nothing to do."""
