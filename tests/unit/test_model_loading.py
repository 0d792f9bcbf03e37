"""include/mlops_core/model_loading.py: models load through a fixed type allow-list per family, never
through the list a model carries; a model with another type is refused before it is built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from include.mlops_core import modeling
from include.mlops_core.errors import ModelRefusedError
from include.mlops_core.model_loading import ALLOWED_TYPES, load_local
from tests.unit.helpers import Canary, churn_config, demo_frame, plant_model, regression_config

CANARY = "tests.unit.helpers.Canary"
FAMILIES = [("classification", "hist_gradient_boosting"), ("classification", "random_forest"),
            ("classification", "logistic_regression"), ("classification", "xgboost"),
            ("regression", "hist_gradient_boosting"), ("regression", "random_forest"),
            ("regression", "ridge"), ("regression", "linear"), ("regression", "xgboost")]
SMALL = {"hist_gradient_boosting": {"max_iter": 5}, "random_forest": {"n_estimators": 3},
         "xgboost": {"n_estimators": 5}, "logistic_regression": {}, "ridge": {}, "linear": {}}


def config_for(task: str, family: str, **hyperparameters: Any) -> Any:
    base = churn_config() if task == "classification" else regression_config()
    training = base.training.model_copy(update={
        "family": family, "hyperparameters": hyperparameters or SMALL[family]})
    return base.model_copy(update={"training": training})


def save(model: Any, directory: Path) -> Path:
    """How the pipeline logs a model: mlflow.sklearn with skops and the types skops needs."""
    import mlflow.sklearn

    mlflow.sklearn.save_model(model, str(directory), serialization_format="skops",
                              skops_trusted_types=modeling.untrusted_types(model),
                              pip_requirements=["scikit-learn"])  # no slow requirement inference
    return directory


@pytest.mark.parametrize(("task", "family"), FAMILIES)
def test_every_family_loads_through_its_allow_list(tmp_path: Path, task: str,
                                                   family: str) -> None:
    """The list in code is complete: a real model of each family and task loads, and predicts
    exactly as before it was saved."""
    config = config_for(task, family)
    frame = demo_frame(config, rows=200)
    model = modeling.train(frame, config)
    assert set(modeling.untrusted_types(model)) <= ALLOWED_TYPES[family]
    loaded = load_local(save(model, tmp_path / family), family)
    features = [c.name for c in config.feature_columns]
    assert (loaded.predict(frame[features]) == model.predict(frame[features])).all()


def test_a_planted_type_is_refused_by_name_and_never_built(tmp_path: Path) -> None:
    marker = tmp_path / "built"
    plant_model(tmp_path / "model", Canary(str(marker)), trusted=[CANARY, "numpy.dtype"])
    with pytest.raises(ModelRefusedError) as err:
        load_local(tmp_path / "model", "hist_gradient_boosting", what="models:/churn/7")
    message = str(err.value)
    assert message.startswith(f"refusing to load model models:/churn/7: it lists type "
                               f"'{CANARY}', outside the allow-list of model family "
                               "'hist_gradient_boosting'; nothing of it was loaded")
    assert message.endswith("(runbook: docs/runbooks/refused-by-policy.md#a-model-that-lists-a-"
                            "type-outside-the-allow-list)")
    assert not marker.exists()


def test_mlflows_own_loader_would_have_built_it(tmp_path: Path) -> None:
    """Why the allow-list is ours: MLflow trusts the list the model carries, and runs it."""
    import mlflow.sklearn

    marker = tmp_path / "built"
    plant_model(tmp_path / "model", Canary(str(marker)), trusted=[CANARY])
    mlflow.sklearn.load_model(str(tmp_path / "model"))
    assert marker.read_text() == "built by a model loader"


@pytest.mark.parametrize(("kwargs", "why"), [
    pytest.param({"serialization_format": "cloudpickle"},
                 "it is serialized as 'cloudpickle'; only skops files are loaded", id="pickle"),
    pytest.param({"extra_flavor": {"code": "code"}}, "it carries code to import", id="code"),
    pytest.param({"extra_flavor": {"pickled_model": "../../etc/passwd"}},
                 "is not a file inside the model directory", id="path-traversal"),
])
def test_what_the_artifact_says_is_never_trusted(tmp_path: Path, kwargs: dict[str, Any],
                                                  why: str) -> None:
    plant_model(tmp_path / "model", [1, 2, 3], trusted=[], **kwargs)
    with pytest.raises(ModelRefusedError, match=why):
        load_local(tmp_path / "model", "ridge")


def test_a_family_without_a_list_is_refused(tmp_path: Path) -> None:
    plant_model(tmp_path / "model", [1, 2, 3], trusted=[])
    with pytest.raises(ModelRefusedError, match="records model family 'svm', which has no "
                                                "allow-list"):
        load_local(tmp_path / "model", "svm")


def test_a_type_of_another_family_is_refused(tmp_path: Path) -> None:
    """A forest's trees are not on the linear models' list."""
    config = config_for("classification", "random_forest", n_estimators=2)
    model = modeling.train(demo_frame(config, rows=120), config)
    with pytest.raises(ModelRefusedError, match="'sklearn.tree._tree.Tree', outside the "
                                                "allow-list of model family 'ridge'"):
        load_local(save(model, tmp_path / "forest"), "ridge")
