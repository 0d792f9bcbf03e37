"""Airflow's ``airflow_local_settings`` hook: Airflow imports this module once in each of its
processes (api-server, scheduler, workers, the task processes they fork), before plugins and
DAGs. It is found on ``PYTHONPATH`` (``plugins/``), as ``./deploy.sh`` and the images set it.

A deployment with its own ``airflow_local_settings`` calls the same function from it.
"""

from mlops_airflow.log_noise import quiet_third_party_warnings

quiet_third_party_warnings()
