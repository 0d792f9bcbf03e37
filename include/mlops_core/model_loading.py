"""Loading a logged model without trusting the artifact: a fixed allow-list of skops types per
model family, declared here in code.

``mlflow.sklearn.load_model`` trusts the skops types that the model's own MLmodel file lists, and
loads pickle when the file says so: whoever can write to the artifact store could run code on
every worker that scores or evaluates. Here the MLmodel file is read only for where the model
file is; the format must be skops, and every type the file would build must be on the list of
its family (the family comes from the training run's params in the tracking store, not from the
artifact). A model listing any other type is refused before anything of it is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from include.mlops_core.errors import ModelRefusedError

# Types skops does not trust by default that a fitted Pipeline of each family holds (scikit-learn
# estimators, numpy arrays and builtins are in skops's own default list). Per family, both tasks;
# tests/unit/test_model_loading.py trains every family and task and checks the list is complete.
_COMMON = frozenset({"numpy.dtype"})
ALLOWED_TYPES: dict[str, frozenset[str]] = {
    "hist_gradient_boosting": _COMMON | {
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"},
    "random_forest": _COMMON | {"sklearn.tree._tree.Tree"},
    "logistic_regression": _COMMON,
    "ridge": _COMMON,
    "linear": _COMMON,
    "xgboost": _COMMON | {"xgboost.core.Booster", "xgboost.sklearn.XGBClassifier",
                          "xgboost.sklearn.XGBRegressor"},
}


def refuse(what: str, why: str) -> ModelRefusedError:
    return ModelRefusedError(f"refusing to load model {what}: {why}; nothing of it was loaded. "
                             "Check who wrote to the MLflow artifact store, then retrain "
                             "(or roll back the alias)")


def model_file(local_dir: Path, what: str) -> Path:
    """The skops file of the MLflow model in ``local_dir`` (format and path checked)."""
    import yaml

    try:
        mlmodel = yaml.safe_load((local_dir / "MLmodel").read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise refuse(what, f"its MLmodel file cannot be read ({type(err).__name__})") from None
    flavor = (mlmodel.get("flavors") or {}).get("sklearn")
    if not isinstance(flavor, dict):
        raise refuse(what, "it is not a scikit-learn model (no sklearn flavor in MLmodel)")
    fmt = flavor.get("serialization_format", "pickle")
    if fmt != "skops":
        raise refuse(what, f"it is serialized as {fmt!r}; only skops files are loaded (pickle "
                           "runs whatever code the file names)")
    if flavor.get("code"):
        raise refuse(what, "it carries code to import (code_paths); models here never do")
    path = (local_dir / str(flavor.get("pickled_model", ""))).resolve()
    if local_dir.resolve() not in path.parents or not path.is_file():
        raise refuse(what, f"its model file {flavor.get('pickled_model')!r} is not a file inside "
                           "the model directory")
    return path


def load_local(local_dir: Path, family: str, *, what: str | None = None) -> Any:
    """Load the model saved in ``local_dir`` if every type it would build is allowed for
    ``family``; raise :class:`ModelRefusedError` naming the first other type otherwise."""
    from include.mlops_core.modeling import skops_io

    skops = skops_io()
    what = what or str(local_dir)
    allowed = ALLOWED_TYPES.get(family)
    if allowed is None:
        raise refuse(what, f"its training run records model family {family!r}, which has no "
                           f"allow-list (known: {', '.join(ALLOWED_TYPES)})")
    path = model_file(local_dir, what)
    try:
        found = set(skops.get_untrusted_types(file=path))
    except Exception as err:  # noqa: BLE001 - not a skops archive at all
        raise refuse(what, f"its model file is not a readable skops archive "
                           f"({type(err).__name__})") from None
    outside = sorted(found - allowed)
    if outside:
        more = f" (and {len(outside) - 1} more: {', '.join(outside[1:])})" \
            if len(outside) > 1 else ""
        raise refuse(what, f"it lists type {outside[0]!r}{more}, outside the allow-list of "
                           f"model family {family!r}")
    return skops.load(path, trusted=sorted(found))


def load_model(model_uri: str, family: str) -> Any:
    """Download the MLflow model at ``model_uri`` (``models:/…``, ``runs:/…``) and load it
    through :func:`load_local`."""
    import tempfile

    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="mlops-model-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        return load_local(Path(local), family, what=model_uri)
