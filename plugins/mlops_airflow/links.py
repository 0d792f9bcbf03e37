"""Extra links on the grid: from a task to its MLflow run, the registered model version, the
promotion card and the drift report (Airflow 3 ``operator_extra_links``).

Airflow computes a task's links in the worker when the task ends and keeps them as XComs; the
UI and ``GET …/taskInstances/{task}/links`` read those. Each link here is built from what the
task itself recorded: the DAG run's MLflow run id (XCom ``mlflow_run_id``, pushed when a stage
opens its run) and the task's return value (model name and version, the scoring run of a drift
check). A task that recorded nothing (it failed before, or skipped) has no URL for that link.
Links point at the MLflow UI people open (``MLOPS_MLFLOW_UI_URL``, else the workers' address).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import attrs
from airflow.sdk import BaseOperatorLink, BaseXCom

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

log = logging.getLogger(__name__)

MLFLOW_RUN_XCOM = "mlflow_run_id"  # what MlopsStageOperator.run_context pushes


@attrs.define
class MlflowLink(BaseOperatorLink):
    """A link to the MLflow UI.

    :param name: the button's label
    :param target: ``run`` (the MLflow run page), ``artifact`` (``artifact_path`` of that run)
        or ``model_version`` (the version named by the task's return value)
    :param artifact_path: the artifact's path in the run, for ``artifact``
    :param run_id_field: take the run id from this field of the task's return value instead of
        the DAG run's MLflow run (the drift check logs to the day's scoring run)
    """

    name: str = attrs.field()
    target: str = attrs.field(validator=attrs.validators.in_(("run", "artifact", "model_version")))
    artifact_path: str | None = None
    run_id_field: str | None = None

    @property
    def xcom_key(self) -> str:
        return "_link_" + re.sub(r"\W+", "_", self.name.lower())

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        try:
            return self._url(operator, ti_key) or ""
        except Exception as err:  # noqa: BLE001 - a link never fails or clutters the task
            log.info("No %r link for %s: %s: %s", self.name, ti_key.task_id, type(err).__name__, err)
            return ""

    def _url(self, operator: Any, ti_key: TaskInstanceKey) -> str | None:
        result: dict[str, Any] = {}
        if self.target == "model_version" or self.run_id_field:  # else only the run id is read
            value = BaseXCom.get_value(ti_key=ti_key, key="return_value")
            result = value if isinstance(value, dict) else {}
        hook = operator.mlflow_hook
        ui = hook.ui_url
        if self.target == "model_version":
            if not (result.get("model_name") and result.get("version")):
                return None
            return f"{ui}/#/models/{quote(str(result['model_name']), safe='')}/versions/{result['version']}"
        run_id = result.get(self.run_id_field) if self.run_id_field else \
            BaseXCom.get_value(ti_key=ti_key, key=MLFLOW_RUN_XCOM)
        if not run_id:
            return None
        if self.target == "run":
            return f"{ui}/#/runs/{run_id}"
        experiment_id = hook.client.get_run(str(run_id)).info.experiment_id
        return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{self.artifact_path}"


MLFLOW_RUN = MlflowLink(name="MLflow run", target="run")
MODEL_VERSION = MlflowLink(name="Model version", target="model_version")
PROMOTION_CARD = MlflowLink(name="Promotion card", target="artifact",
                            artifact_path="promotion_card.html")
DRIFT_REPORT = MlflowLink(name="Drift report", target="artifact", artifact_path="drift/report.html",
                          run_id_field="scoring_run_id")
