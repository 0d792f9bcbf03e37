"""The tune and select tasks: search each candidate's hyperparameters, keep the best candidate.

The work is in :mod:`include.mlops_core.tuning` (Optuna) and :func:`include.mlops_core.pipeline.select`;
these operators only wire them to the DAG run's MLflow run, the object store and the study
database (:class:`mlops_airflow.hooks.optuna.OptunaStorageHook`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from mlops_airflow.hooks.optuna import OptunaStorageHook
from mlops_airflow.operators.training import MlopsStageOperator, split_of

if TYPE_CHECKING:
    from airflow.sdk import Context

    from include.mlops_core.pipeline import RunContext


def study_for(run_ctx: RunContext, context: Context, candidate: str) -> str:
    """The study of ``candidate`` in this DAG run: a retried task continues it."""
    from include.mlops_core.tuning import study_name

    return study_name(run_ctx.model_name, context["dag_run"].run_id, candidate)


class TuneOperator(MlopsStageOperator):
    """Run trials of one candidate's Optuna study until it holds ``tuning.n_trials`` finished
    trials (or ``tuning.timeout_minutes`` pass). The DAG maps ``tuning.parallel_tasks`` of these
    per candidate that has a search space; all of them share the candidate's study, which lives
    in the study database and is keyed by the DAG run, so a retried task adds no trial the
    budget does not allow. Every trial is an MLflow child run of the DAG run's run.

    :param slot: ``{"candidate": label, "worker": index}`` (templated; the mapped argument)
    :param features: the build_features task's XCom (templated)
    :param optuna_conn_id: connection of the study database
    """

    template_fields: Sequence[str] = (*MlopsStageOperator.template_fields, "slot", "features")
    ui_color = "#f3e8fd"

    def __init__(self, *, slot: Any, features: Any,
                 optuna_conn_id: str = OptunaStorageHook.default_conn_name,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.slot = slot
        self.features = features
        self.optuna_conn_id = optuna_conn_id

    @cached_property
    def optuna_hook(self) -> OptunaStorageHook:
        return OptunaStorageHook(self.optuna_conn_id)

    def run(self, run_ctx: RunContext, context: Context) -> dict[str, Any]:
        from include.mlops_core import tuning

        candidate = self.slot["candidate"]
        frame = run_ctx.read_frame(split_of(self.features)["train_uri"])
        # Child runs go to the parent run's experiment (tune looks it up once).
        return tuning.tune(frame, run_ctx.config, candidate=candidate,
                           storage_url=self.optuna_hook.storage_url,
                           study=study_for(run_ctx, context, candidate),
                           worker=int(self.slot.get("worker", 0)), mlflow_client=run_ctx.client,
                           parent_run_id=run_ctx.mlflow_run_id)


class SelectModelOperator(MlopsStageOperator):
    """Compare the trained candidates on the same held-out rows and pass only the best (by the
    champion metric) on to evaluate, the gate and register; the comparison table goes into the
    promotion card. With one candidate it passes it on as it is.

    :param candidates: the mapped train task's XComs (templated)
    :param features: the build_features task's XCom (templated)
    """

    template_fields: Sequence[str] = (*MlopsStageOperator.template_fields, "candidates",
                                      "features")

    def __init__(self, *, candidates: Any, features: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.candidates = candidates
        self.features = features

    def run(self, run_ctx: RunContext, context: Context) -> dict[str, Any]:
        from include.mlops_core.pipeline import select

        trained = [dict(item) for item in self.candidates if item]
        if not trained:
            from include.mlops_core.errors import PipelineError

            raise PipelineError("no candidate was trained: every train task failed or was "
                                "skipped; see their logs", runbook="trainer-container.md")
        return select(run_ctx, trained=trained, test_uri=split_of(self.features)["test_uri"])
