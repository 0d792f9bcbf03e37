"""Test-wide Airflow settings. They must be in the environment before anything imports airflow,
so they are set when pytest loads this file, pointing at a throw-away AIRFLOW_HOME."""

import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_home = Path(tempfile.mkdtemp(prefix="mlops-airflow-"))
os.environ.update({
    "AIRFLOW_HOME": str(_home),
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_home / 'airflow.db'}",
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    "MLOPS_TASK_RETRIES": "0",
    "MLOPS_RETRY_DELAY_SECONDS": "1",
    "GX_ANALYTICS_ENABLED": "False",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_CONFIGURE_LOGGING": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
})
