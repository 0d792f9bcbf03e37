"""Why a model predicts what it does: SHAP values and permutation importance per input column.

:func:`explain` returns a small JSON-serialisable dict (logged beside each model version);
:func:`summary_plot` draws it; :func:`importance_ranking` turns it into weights that the drift
report uses to rank drifted columns.

Which SHAP explainer (``"method"``), and why:

* ``tree`` (hist_gradient_boosting, random_forest, xgboost): ``shap.TreeExplainer`` on the fitted
  estimator, applied to the transformed features of a row sample. Exact and polynomial time
  (path-dependent: it needs no background data, the trees' own cover is the reference), about
  0.1 s for 500 rows of the demo's boosting model. Its cost grows with leaves x depth^2 per
  tree: for fully grown forests the rows are cut to :data:`TREE_SHAP_BUDGET`, and when fewer
  than :data:`MIN_EXACT_ROWS` would remain, shap's approximate per-path attributions (Saabas)
  explain the whole sample instead (``"approximate": true`` and a note). The interventional
  variant (with background data) is not used: it crashed the process (segfault in shap's C
  extension) on a fully grown 100-tree forest. Transformed columns (one-hot categories) are
  mapped back to their input column through the fitted ColumnTransformer's ``transformers_``
  and summed as absolute values per row.
* ``permutation`` (every other family: logistic_regression, ridge, linear, and any estimator
  outside the known families): ``shap.explainers.Permutation``, model-agnostic, over the whole
  pipeline on the raw input columns (categorical columns integer-coded for the masker), on at
  most :data:`AGNOSTIC_ROWS` rows of the sample against :data:`AGNOSTIC_BACKGROUND` background
  rows drawn from it (``shap.maskers.Independent``: interventional SHAP). Model-agnostic on
  purpose: it works for any estimator the pipeline may hold, and it attributes to the input columns themselves, so a
  categorical column's value is the signed effect of its category, not a sum of absolute
  values over its one-hot columns (which overstates it, and which changes with how the fit
  splits an effect between one-hot columns that are collinear with the intercept; the signed
  sum does not).
  For the linear families it is *exact* (``"approximate": false``): the preprocessor
  transforms each column on its own and the estimator is linear in its output, so the
  explained output (the decision function, i.e. log-odds, for logistic regression; the
  prediction for regression) is a sum of one function per input column, every ordering of the
  columns gives the same marginal contributions, and one antithetic pair of orderings yields
  the interventional SHAP values themselves, equal to ``shap.LinearExplainer`` on the
  transformed features with the same background, summed per input column
  (tests/unit/test_explain.py checks this). For any other estimator (a tree explainer that
  failed, an unknown family) two antithetic pairs give an estimate (``"approximate": true``
  and a note).
  Cost: one pipeline call per explained row and antithetic pair, on (2 x columns + 1) x
  background rows, mostly the pipeline's fixed cost per call: 5 to 7 ms per row for the
  9-column churn demo on the 2-core machine, 1.0 to 1.3 s for 200 rows of logistic regression
  at 100k rows (``shap.LinearExplainer`` took 0.03 s), twice that with two pairs. The first
  call in a process also waits for numba to compile shap's masking code: about 6 s, and
  about 1 s more for a multi-output model (bench/explain_bench.py's "first round" column).
  Rows are passed to the explainer one at a time: in a multi-row call shap 0.51's
  ``Explainer.__call__`` rebinds its ``main_effects`` argument to a list, so every row after
  the first also computes main effects, one more model call per row that nothing reads.

SHAP values are in the model's raw output (``"shap_output"``): log-odds (margin) for gradient
boosting, xgboost and logistic regression, class probability for a random forest, the prediction
for regression (for an estimator outside the known families: its decision function if it has
one, else the positive-class probability). Binary classification explains the positive class
(the last of ``classes_``), multi-class averages the per-class means over the classes.

Permutation importance (``sklearn.inspection.permutation_importance``) runs on the whole pipeline
over held-out rows, scored by the dataset's comparison metric, so it is model-agnostic and in
the metric's units (how much the score drops when the column is shuffled).

Cost is bounded by the row samples, not the data size (bench/explain_bench.py).
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

from include.mlops_core.config import DatasetConfig
from include.mlops_core.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

TREE_FAMILIES = frozenset({"hist_gradient_boosting", "random_forest", "xgboost"})
# Linear in the transformed features, hence additive in the input columns (the preprocessor
# transforms each column on its own): permutation SHAP with one antithetic pair is exact for them.
LINEAR_FAMILIES = frozenset({"logistic_regression", "ridge", "linear"})
# Exact Tree SHAP costs about leaves x depth^2 per tree and row: fine for boosting (shallow trees,
# ~3e5 per row at 100k rows), hours for a fully grown random forest (~2e9 per row). Rows are cut
# to fit this budget (about 0.3 to 2 s here); below MIN_EXACT_ROWS rows the approximate
# per-path attributions (Saabas, one ordering) are used instead.
TREE_SHAP_BUDGET = 1_000_000_000
MIN_EXACT_ROWS = 100
AGNOSTIC_ROWS = 200  # rows explained by the permutation explainer (at most shap_rows)
AGNOSTIC_BACKGROUND = 50  # background rows it masks with, drawn from the same sample
PLOT_COLUMNS = 15

# comparison metric -> (sklearn scorer name for binary / multi-class classification or regression)
CLASSIFICATION_SCORERS = {"roc_auc": ("roc_auc", "roc_auc_ovr"), "accuracy": ("accuracy", "accuracy"),
                          "f1": ("f1", "f1_macro"), "log_loss": ("neg_log_loss", "neg_log_loss")}
REGRESSION_SCORERS = {"rmse": "neg_root_mean_squared_error", "mae": "neg_mean_absolute_error",
                      "r2": "r2"}


def explain(model: Any, frame: pd.DataFrame, config: DatasetConfig, *, seed: int | None = None,
            shap_rows: int = 500, permutation_rows: int = 5000, repeats: int = 5) -> dict[str, Any]:
    """Mean |SHAP| and permutation importance per input column of ``model`` on ``frame``.

    :param model: a fitted ``Pipeline([("features", ColumnTransformer), ("model", estimator)])``
        as :func:`include.mlops_core.modeling.train` builds it
    :param frame: held-out rows with the feature columns and the target
    :param seed: row sampling, permutations and shuffles; default ``config.training.seed``
    :param shap_rows: rows sampled for the SHAP values
    :param permutation_rows: rows sampled for permutation importance
    :param repeats: shuffles per column for permutation importance
    :return: ``method``, ``approximate``, ``shap_output``, ``scoring``, ``shap`` and
        ``permutation`` per input column, ``top_features`` (all columns by mean |SHAP|,
        descending), ``rows``, ``seconds``, ``seed`` and ``notes``; no NaN anywhere
    """
    shap = _import_shap()
    if shap_rows < 1 or permutation_rows < 1 or repeats < 1:
        raise ValueError("shap_rows, permutation_rows and repeats must be at least 1")
    seed = config.training.seed if seed is None else int(seed)
    features = [c.name for c in config.feature_columns]
    if frame.empty:
        raise ValueError("explain needs at least one row")
    notes: list[str] = []

    started = time.perf_counter()
    shap_sample = _sample(frame[features], shap_rows, seed)
    shap_result = _shap_importance(shap, model, shap_sample, config, seed, notes)
    shap_seconds = time.perf_counter() - started
    method, shap_rows_used = shap_result["method"], shap_result["rows"]

    started = time.perf_counter()
    scoring, perm_mean, perm_std, perm_rows_used = _permutation_importance(
        model, frame, config, features, seed, permutation_rows, repeats, notes)
    perm_seconds = time.perf_counter() - started

    constant = [c for c in features if shap_sample[c].nunique(dropna=False) <= 1]
    if constant:
        notes.append(f"constant in the sampled rows: {constant}; shuffling them changes nothing "
                     "(permutation importance 0)")
    shap_values = _finite(dict(zip(features, shap_result["values"], strict=True)), "mean |SHAP|",
                          notes)
    perm_mean_values = _finite(dict(zip(features, perm_mean, strict=True)), "permutation mean", notes)
    perm_std_values = _finite(dict(zip(features, perm_std, strict=True)), "permutation std", notes)
    order = sorted(features, key=lambda c: (-shap_values[c], -perm_mean_values[c], c))
    top = [{"column": c, "shap": shap_values[c], "permutation_mean": perm_mean_values[c],
            "permutation_std": perm_std_values[c], "rank": rank}
           for rank, c in enumerate(order, start=1)]
    result = {
        "method": method,
        "approximate": shap_result["approximate"],
        "shap_output": shap_result["output"],
        "scoring": scoring,
        "shap": shap_values,
        "permutation": {c: {"mean": perm_mean_values[c], "std": perm_std_values[c]} for c in features},
        "top_features": top,
        "rows": {"shap": shap_rows_used, "permutation": perm_rows_used},
        "seconds": {"shap": round(shap_seconds, 3), "permutation": round(perm_seconds, 3)},
        "seed": seed,
        "notes": notes,
    }
    log.info("Explained %s with %s SHAP on %d rows (%.2f s) and permutation importance (%s) on "
             "%d rows (%.2f s); top columns: %s", config.training.family, method, shap_rows_used,
             shap_seconds, scoring, perm_rows_used, perm_seconds, ", ".join(order[:5]))
    return result


def summary_plot(explanation: dict[str, Any], title: str) -> bytes:
    """PNG: the top :data:`PLOT_COLUMNS` columns by mean |SHAP| (left) beside their permutation
    importance with its standard deviation (right)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = list(explanation.get("top_features") or [])[:PLOT_COLUMNS]
    columns = [row["column"] for row in top][::-1]  # barh draws bottom-up: largest on top
    shap_values = [row["shap"] for row in top][::-1]
    perm = [row["permutation_mean"] for row in top][::-1]
    perm_std = [row["permutation_std"] for row in top][::-1]
    height = 1.5 + 0.35 * max(len(columns), 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, height), dpi=100, sharey=True)
    try:
        if columns:
            left.barh(columns, shap_values, color="#1f77b4")
            right.barh(columns, perm, xerr=perm_std, color="#ff7f0e", ecolor="#555555")
        else:
            left.text(0.5, 0.5, "no columns", ha="center", va="center", transform=left.transAxes)
        left.set_xlabel(f"mean |SHAP| ({explanation.get('shap_output', 'model output')})")
        left.set_title(f"SHAP ({explanation.get('method', '?')}, "
                       f"{explanation.get('rows', {}).get('shap', '?')} rows)")
        right.set_xlabel(f"score drop ({explanation.get('scoring', 'metric')})")
        right.set_title(f"permutation ({explanation.get('rows', {}).get('permutation', '?')} rows)")
        right.axvline(0, color="black", linewidth=0.8)
        fig.suptitle(title)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(fig)


def importance_ranking(explanation: dict[str, Any] | None) -> dict[str, float]:
    """Column -> mean |SHAP| / the sum over columns (sums to 1); every column 0.0 when the sum is
    0, ``{}`` without an explanation (a column missing here is of unknown importance: 0)."""
    values = {c: float(v) for c, v in ((explanation or {}).get("shap") or {}).items()}
    values = {c: v if math.isfinite(v) and v > 0 else 0.0 for c, v in values.items()}
    total = sum(values.values())
    return {c: (v / total if total > 0 else 0.0) for c, v in values.items()}


# -- SHAP -----------------------------------------------------------------------------------------
def _import_shap() -> Any:
    """``shap``, imported without the matplotlib deprecation warnings its plotting module raises
    at import (only those, only during the import)."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=PendingDeprecationWarning,
                                    module=r"shap\.plots")
            import shap
    except ImportError as err:
        raise ConfigError(f"model explanations need the shap package, which cannot be imported "
                          f"here ({err}). Install the pinned version from requirements.txt "
                          "(pip install shap==0.51.0; it needs numba) in the Airflow worker and "
                          "the trainer image") from err
    return shap


def _shap_importance(shap: Any, model: Any, sample: pd.DataFrame, config: DatasetConfig,
                     seed: int, notes: list[str]) -> dict[str, Any]:
    """``method``, ``output``, ``values`` (mean |SHAP| per input column, in ``sample``'s column
    order), ``rows`` (explained) and ``approximate``."""
    import numpy as np

    family = config.training.family
    additive = family in LINEAR_FAMILIES
    if family in TREE_FAMILIES:
        found: list[str] = []  # kept only if this explainer succeeds
        try:
            result = {"method": "tree", "output": _output_name(config),
                      **_transformed_shap(shap, model, sample, config, found)}
            notes.extend(found)
            return result
        except Exception as err:  # any failure to read the model: the model-agnostic explainer
            log.warning("shap tree explainer failed on %s (%s); using the model-agnostic "
                        "permutation explainer", family, err)
            notes.append(f"the tree explainer failed ({type(err).__name__}: {err}); SHAP "
                         "values come from the model-agnostic permutation explainer (estimated)")
    elif not additive:
        notes.append(f"family {family!r} is not known to be additive in its input columns: "
                     "SHAP values from the model-agnostic permutation explainer are estimated")
    rows = sample.iloc[:AGNOSTIC_ROWS]
    background = sample.sample(n=min(AGNOSTIC_BACKGROUND, len(sample)), random_state=seed)
    values = _agnostic_values(shap, model, rows, background, config, seed,
                              pairs=1 if additive else 2)
    return {"method": "permutation",
            "output": _output_name(config) if additive else _agnostic_output_name(model, config),
            "values": _reduce_outputs(np.abs(values).mean(axis=0), config), "rows": len(rows),
            "approximate": not additive}


def _output_name(config: DatasetConfig) -> str:
    if config.task == "regression":
        return "prediction"
    if config.training.family == "random_forest":
        return "probability"
    return "log-odds"


def _agnostic_output_name(model: Any, config: DatasetConfig) -> str:
    if config.task == "regression":
        return "prediction"
    return "decision function" if hasattr(model, "decision_function") else "probability"


def _transformed_shap(shap: Any, model: Any, sample: pd.DataFrame, config: DatasetConfig,
                      notes: list[str]) -> dict[str, Any]:
    """Tree SHAP on the transformed features, summed back to input columns (absolute values):
    ``values``, ``rows`` and ``approximate``."""
    import numpy as np

    preprocessor, estimator = model.named_steps["features"], model.named_steps["model"]
    rows, approximate = len(sample), False
    explainer = shap.TreeExplainer(estimator)
    work = _tree_work(explainer)
    affordable = TREE_SHAP_BUDGET // work if work else rows
    if affordable >= min(rows, MIN_EXACT_ROWS):
        rows = min(rows, affordable)
    else:
        approximate = True
        notes.append(f"exact Tree SHAP would cost about {work:.2g} operations per row (deep "
                     f"trees) and fit only {affordable} rows in the budget: approximate "
                     f"per-path attributions (Saabas) on {rows} rows instead")
    x = preprocessor.transform(sample.iloc[:rows])
    x = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=float)
    # No additivity check: float32 split thresholds (gradient boosting) can miss it by a hair
    # and make shap raise, for values that are fine.
    values = explainer.shap_values(x, check_additivity=False, approximate=approximate)
    values = _per_output(values, len(x), x.shape[1])
    owners = input_owners(preprocessor, list(sample.columns))
    if len(owners) != values.shape[1]:
        raise ValueError(f"{values.shape[1]} SHAP columns for {len(owners)} transformed columns")
    unowned = int((owners < 0).sum())
    if unowned:
        notes.append(f"{unowned} transformed column(s) could not be traced to an input column and "
                     "are left out of the SHAP sums")
    groups = np.zeros((len(owners), sample.shape[1]))
    groups[np.flatnonzero(owners >= 0), owners[owners >= 0]] = 1.0
    grouped = np.einsum("ndk,dm->nmk", np.abs(values), groups)  # |SHAP| summed per input column
    return {"values": _reduce_outputs(grouped.mean(axis=0), config), "rows": len(x),
            "approximate": approximate}


def _tree_work(explainer: Any) -> int:
    """Operations per explained row of exact (path-dependent) Tree SHAP, which is
    O(leaves x depth^2) per tree; 0 when shap's tree representation cannot be read."""
    import numpy as np

    try:
        return int(sum(int((np.asarray(t.children_left) < 0).sum()) * (int(t.max_depth) + 1) ** 2
                       for t in explainer.model.trees))
    except (AttributeError, TypeError):
        return 0


def _per_output(values: Any, rows: int, width: int) -> np.ndarray:
    """SHAP values as (rows, columns, outputs) whatever shape the explainer returned."""
    import numpy as np

    if isinstance(values, list):  # older shap: one array per output
        values = np.stack([np.asarray(v) for v in values], axis=-1)
    values = np.asarray(values, dtype=float)
    if values.ndim == 2:
        values = values[:, :, None]
    if values.shape[:2] != (rows, width):
        raise ValueError(f"unexpected SHAP value shape {values.shape} for {rows} x {width} inputs")
    return values


def _reduce_outputs(per_output: np.ndarray, config: DatasetConfig) -> np.ndarray:
    """(columns, outputs) -> (columns,): the positive class of a two-output binary model (the
    last output), the mean over classes of a multi-class one, the only output otherwise."""
    if per_output.shape[1] == 1:
        return per_output[:, 0]
    if config.task == "classification" and per_output.shape[1] == 2:
        return per_output[:, 1]
    return per_output.mean(axis=1)


def input_owners(preprocessor: Any, features: list[str]) -> np.ndarray:
    """For each output column of the fitted ColumnTransformer, the index in ``features`` of the
    input column it comes from (-1 when unknown). Read from ``transformers_`` and
    ``output_indices_``, one-hot widths from the encoder's ``categories_``; names are only
    parsed for a step whose output cannot be traced otherwise."""
    import numpy as np

    width = max((s.stop for s in preprocessor.output_indices_.values()), default=0)
    owners = np.full(width, -1, dtype=int)
    index = {name: i for i, name in enumerate(features)}
    for name, transformer, columns in preprocessor.transformers_:
        part = preprocessor.output_indices_.get(name)
        if part is None or part.stop <= part.start or (isinstance(transformer, str)
                                                       and transformer == "drop"):
            continue
        sources = _output_sources(transformer, _column_names(columns, features))
        if len(sources) != part.stop - part.start:
            continue  # cannot trace this transformer: its columns stay unknown
        for offset, source in enumerate(sources):
            owners[part.start + offset] = index.get(source, -1) if source is not None else -1
    return owners


def _column_names(columns: Any, features: list[str]) -> list[str]:
    import numpy as np

    if isinstance(columns, str | int):
        columns = [columns]
    elif isinstance(columns, slice):
        return features[columns]
    columns = list(columns)
    if columns and all(isinstance(c, bool | np.bool_) for c in columns):
        return [f for f, keep in zip(features, columns, strict=True) if keep]
    return [features[c] if isinstance(c, int | np.integer) else str(c) for c in columns]


def _output_sources(transformer: Any, columns: list[str]) -> list[str | None]:
    """The input column behind each output column of one ColumnTransformer entry."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    if isinstance(transformer, str):  # "passthrough"
        return list(columns)
    steps = [s for _, s in transformer.steps] if isinstance(transformer, Pipeline) else [transformer]
    sources: list[str | None] = list(columns)
    for step in steps:
        if step is None or (isinstance(step, str) and step == "passthrough"):
            continue
        if isinstance(step, OneHotEncoder):
            widths = _one_hot_widths(step)
            if widths is not None and len(widths) == len(sources):
                sources = [s for s, w in zip(sources, widths, strict=True) for _ in range(w)]
                continue
        names = [str(s) for s in sources]
        out = [str(n) for n in step.get_feature_names_out(names)]
        sources = [n if n in names else _longest_contained(n, names) for n in out]
    return sources


def _one_hot_widths(encoder: Any) -> list[int] | None:
    """Output columns per input column of a fitted OneHotEncoder (dropped and infrequent
    categories accounted for); None when they do not add up to its output width."""
    drop = getattr(encoder, "drop_idx_", None)
    infrequent = getattr(encoder, "infrequent_categories_", None)
    widths = []
    for i, categories in enumerate(encoder.categories_):
        width = len(categories)
        if infrequent is not None and infrequent[i] is not None:
            width = width - len(infrequent[i]) + 1
        if drop is not None and drop[i] is not None:
            width -= 1
        widths.append(width)
    return widths if sum(widths) == len(encoder.get_feature_names_out()) else None


def _longest_contained(name: str, columns: list[str]) -> str | None:
    found = [c for c in columns if name.startswith(f"{c}_") or name.endswith(f"_{c}")]
    return max(found, key=len) if found else None


def _agnostic_values(shap: Any, model: Any, rows: pd.DataFrame, background: pd.DataFrame,
                     config: DatasetConfig, seed: int, *, pairs: int) -> np.ndarray:
    """Permutation SHAP over the whole pipeline on the raw input columns (model-agnostic), signed,
    as (rows, input columns, outputs): ``rows`` explained against ``background`` (an independent
    masker: interventional SHAP), ``pairs`` antithetic pairs of column orderings per row (one
    is exact for a model additive in its input columns)."""
    import numpy as np
    import pandas as pd

    columns = list(rows.columns)
    both = pd.concat([rows, background[columns]], ignore_index=True)
    numeric = {c: pd.api.types.is_numeric_dtype(both[c]) and not pd.api.types.is_bool_dtype(both[c])
               for c in columns}
    # shap's maskers compare values numerically: categories travel as float codes (NaN: missing,
    # decoded as the missing marker the rows themselves hold: None as ingest writes it, or NaN)
    categories = {c: pd.Index(pd.unique(both[c].dropna())) for c in columns if not numeric[c]}
    missing = {c: next((v for v in both[c] if pd.isna(v)), None) for c in categories}

    def encode(part: pd.DataFrame) -> np.ndarray:
        out = np.empty((len(part), len(columns)), dtype=float)
        for j, c in enumerate(columns):
            if numeric[c]:
                out[:, j] = part[c].to_numpy(dtype=float, na_value=np.nan)
            else:
                codes = categories[c].get_indexer(part[c]).astype(float)
                out[:, j] = np.where(codes < 0, np.nan, codes)
        return out

    def decode(values: np.ndarray) -> pd.DataFrame:
        data = {}
        for j, c in enumerate(columns):
            if numeric[c]:
                data[c] = values[:, j]
            else:
                lookup = np.asarray(categories[c], dtype=object)
                codes = values[:, j]
                known = ~np.isnan(codes)
                column = np.full(len(codes), missing[c], dtype=object)
                column[known] = lookup[codes[known].astype(int)]
                data[c] = column
        return pd.DataFrame(data, columns=columns)

    if hasattr(model, "decision_function"):
        respond = model.decision_function
    elif config.task == "classification":
        def respond(x: pd.DataFrame) -> np.ndarray:
            proba = model.predict_proba(x)
            return proba[:, -1] if proba.shape[1] == 2 else proba
    else:
        respond = model.predict

    def predict(values: np.ndarray) -> np.ndarray:
        return np.asarray(respond(decode(values)), dtype=float)

    masker = shap.maskers.Independent(encode(background), max_samples=len(background))
    x = encode(rows)
    evals = pairs * (2 * len(columns) + 1)
    state = np.random.get_state()  # the explainer seeds numpy's global generator: restore it
    try:
        explainer = shap.explainers.Permutation(predict, masker, seed=seed)
        # One row per call: in a multi-row call shap 0.51's Explainer.__call__ rebinds its
        # main_effects argument to a list, and every row after the first computes main effects
        # (one more model call per row) that nothing reads.
        values = [_per_output(explainer(x[i:i + 1], max_evals=evals, silent=True).values, 1,
                              len(columns)) for i in range(len(x))]
    finally:
        np.random.set_state(state)
    return np.concatenate(values, axis=0)


# -- permutation importance -----------------------------------------------------------------------
def _permutation_importance(model: Any, frame: pd.DataFrame, config: DatasetConfig,
                            features: list[str], seed: int, rows: int, repeats: int,
                            notes: list[str]) -> tuple[str, list[float], list[float], int]:
    """(scorer name, mean, std, rows used): the score drop when each input column is shuffled."""
    from sklearn.inspection import permutation_importance

    from include.mlops_core.modeling import target

    labelled = frame[frame[config.target].notna()]
    sample = _sample(labelled, rows, seed)
    zeros = [0.0] * len(features)
    if sample.empty:
        notes.append("no labelled rows: permutation importance is 0 for every column")
        return "none", zeros, zeros, 0
    name, scorer = _scorer(model, config)
    y = target(sample, config)
    if config.comparison_metric == "roc_auc" and y.nunique() < 2:
        notes.append(f"permutation importance ({name}) needs two classes; the sampled rows hold "
                     f"only {y.unique().tolist()}: it is 0 for every column")
        return name, zeros, zeros, len(sample)
    try:
        result = permutation_importance(model, sample[features], y,
                                        scoring=scorer, n_repeats=repeats, random_state=seed,
                                        n_jobs=None)
    except ValueError as err:  # e.g. ROC AUC on a sample holding a single class
        notes.append(f"permutation importance ({name}) failed on the sampled rows: {err}; "
                     "it is 0 for every column")
        return name, zeros, zeros, len(sample)
    return (name, [float(v) for v in result.importances_mean],
            [float(v) for v in result.importances_std], len(sample))


def _scorer(model: Any, config: DatasetConfig) -> tuple[str, Any]:
    """The sklearn scorer of the comparison metric: (its name, the scorer or name to pass).
    Classification scorers get the model's classes, so a sample missing a class scores the
    same way as the full held-out set (modeling.metrics)."""
    from sklearn import metrics

    metric = config.comparison_metric
    if config.task == "regression":
        name = REGRESSION_SCORERS[metric]
        return name, name
    classes = list(model.classes_)
    binary = len(classes) == 2
    name = CLASSIFICATION_SCORERS[metric][0 if binary else 1]
    if metric == "log_loss":
        return name, metrics.make_scorer(metrics.log_loss, greater_is_better=False,
                                         response_method="predict_proba", labels=classes)
    if metric == "f1":
        extra = {"pos_label": classes[-1]} if binary else {"average": "macro", "labels": classes}
        return name, metrics.make_scorer(metrics.f1_score, zero_division=0, **extra)
    if metric == "roc_auc" and not binary:
        return name, metrics.make_scorer(metrics.roc_auc_score, response_method="predict_proba",
                                         multi_class="ovr", labels=classes)
    return name, name


# -- helpers --------------------------------------------------------------------------------------
def _sample(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    if len(frame) <= rows:
        return frame.reset_index(drop=True)
    return frame.sample(n=rows, random_state=seed).reset_index(drop=True)


def _finite(values: dict[str, Any], what: str, notes: list[str]) -> dict[str, float]:
    out = {c: float(v) for c, v in values.items()}
    bad = sorted(c for c, v in out.items() if not math.isfinite(v))
    if bad:
        notes.append(f"{what} was not a number for {bad} (constant or unscorable): set to 0.0")
    return {c: (0.0 if c in bad else v) for c, v in out.items()}
