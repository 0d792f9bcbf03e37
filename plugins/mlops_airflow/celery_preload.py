"""Imported once by each Celery worker's main process (:mod:`mlops_airflow.celery_config`), before the
worker forks its pool: the same library list as the LocalExecutor's forkserver
(:func:`mlops_airflow.worker_preload.preload_modules`, derived from what the DAGs and stages import; the
warm-up module last). Airflow is already imported in a worker, so skops's import-time scan meets
its deprecated attributes: those warnings are ignored during the import only, as
``include.mlops_core.modeling.skops_io`` does. A module that is not installed is skipped, as the
forkserver skips it."""

from __future__ import annotations

import importlib
import logging
import time
import warnings

from mlops_airflow.worker_preload import preload_modules

log = logging.getLogger(__name__)


def preload() -> list[str]:
    """Import the list; returns what could not be imported."""
    missing = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"skops\.io\._utils")
        for name in preload_modules():
            try:
                importlib.import_module(name)
            except ImportError:
                missing.append(name)
    return missing


_started = time.monotonic()
_missing = preload()
log.info("Celery worker preloaded the stages' libraries in %.1f s%s", time.monotonic() - _started,
         f" (not installed: {', '.join(_missing)})" if _missing else "")
