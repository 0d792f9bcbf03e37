"""Celery settings for CeleryExecutor workers (``[celery] celery_config_options =
mlops_airflow.celery_config.CELERY_CONFIG``): Airflow's own defaults, plus one module that each worker's
main process imports at start (Celery's ``imports``), before it forks its pool:
:mod:`mlops_airflow.celery_preload`. Airflow runs a task in a process forked from a pool process, so the
task starts with the stages' libraries imported, as a LocalExecutor task does from the preloaded
forkserver (:mod:`mlops_airflow.worker_preload`)."""

from __future__ import annotations

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

CELERY_CONFIG = {**DEFAULT_CELERY_CONFIG,
                 "imports": (*DEFAULT_CELERY_CONFIG.get("imports", ()), "mlops_airflow.celery_preload")}
