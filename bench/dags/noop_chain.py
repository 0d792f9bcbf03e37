"""Airflow's own cost of a run, for bench/training_bench.py: the training DAG's shape (nine
tasks in a chain, the same ids) with tasks that do nothing. Its ``dag.test()`` time is what
Airflow spends whatever the tasks do; not a DAG for users (it lives outside dags/)."""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

STAGES = ("check_changed", "ingest", "validate", "build_features", "train", "evaluate", "gate",
          "register", "promote")


@dag(schedule=None, start_date=pendulum.datetime(2025, 1, 1), catchup=False, tags=["bench"])
def noop_chain():
    previous = None
    for stage in STAGES:
        current = task(task_id=stage)(lambda: None)()
        if previous is not None:
            previous >> current
        previous = current


noop_chain()
