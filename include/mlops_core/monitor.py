"""Monitoring stages: data and prediction drift of a scored day, live metrics once labels arrive,
and the A/B decision between champion and challenger.

Like :mod:`include.mlops_core.pipeline`, every stage reads by URI, writes to keys that a re-run
overwrites (never adds), logs to MLflow and returns a small dict for XCom.

Two things are kept so that a day's cost follows the day, not the history: the live index
(``live_index/v<version>/date=*/``, one create-only entry per day and model version, written
before the day's joined rows) lets the A/B decision read only its challenger's live days; and
the champion's output on its held-out reference rows is written once per version
(``drift/reference/v<version>/``, create-only) for the drift checks of later days. Both are
keyed so that a re-run finds its own entry and adds nothing.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from include.mlops_core import ingest as ingestion
from include.mlops_core import scoring, tracking
from include.mlops_core.errors import DataError, SchemaError
from include.mlops_core.storage import join

if TYPE_CHECKING:
    import pandas as pd

    from include.mlops_core.pipeline import RunContext

log = logging.getLogger(__name__)

PREDICTION_COLUMN = "prediction"


def drift_dir(run_ctx: RunContext, day: date) -> str:
    return join(run_ctx.artifacts_uri, run_ctx.model_name, "drift", f"date={day.isoformat()}")


def live_dir(run_ctx: RunContext, day: date) -> str:
    return join(run_ctx.artifacts_uri, run_ctx.model_name, "live", f"date={day.isoformat()}")


def live_index_root(artifacts_uri: str, model_name: str) -> str:
    """``live_index/v<version>/date=YYYY-MM-DD/`` exists for every live day whose labelled rows
    hold that version (served or shadow): the A/B decision reads only its challenger's days."""
    return join(artifacts_uri, model_name, "live_index")


INDEX_ENTRY = "entry.json"
INDEX_COMPLETE = "complete.json"  # written once the live days before the index are indexed too


# -- drift ------------------------------------------------------------------------------------------
def reference_snapshot(run_ctx: RunContext, version: str) -> str:
    """The training snapshot of a model version (its ``mlops.data_snapshot`` tag)."""
    mv = run_ctx.client.get_model_version(run_ctx.model_name, version)
    uri = mv.tags.get("mlops.data_snapshot")
    if not uri:
        raise DataError(f"missing reference: {run_ctx.model_name} v{version} has no "
                        "mlops.data_snapshot tag (registered outside the training DAG?); retrain "
                        "it with the training DAG to get a drift reference",
                        runbook="drift-detected.md")
    if not run_ctx.store.exists(uri):
        raise DataError(f"missing reference partition: the training snapshot {uri} of "
                        f"{run_ctx.model_name} v{version} is gone; restore it or retrain",
                        runbook="drift-detected.md")
    return uri


def check_drift(run_ctx: RunContext, day: date) -> dict[str, Any]:
    """Drift of one scored day against the scoring champion's training snapshot.

    Features and the model's output (``prediction``: the positive-class score for classifiers)
    are compared column by column with Evidently's default tests on all rows
    (:mod:`include.mlops_core.drift`); the HTML report and the JSON result go to S3 and to the
    scoring run in MLflow. Columns that cannot be checked (all missing) fail the task after the
    report is written, and never count as drift: a broken check must not trigger a retrain.
    """

    from include.mlops_core import drift, drift_report

    config, store = run_ctx.config, run_ctx.store
    manifest, served = scoring.read_committed(store, run_ctx.artifacts_uri, run_ctx.model_name, day)
    version = manifest["champion_version"]
    reference_uri = reference_snapshot(run_ctx, version)
    reference = run_ctx.read_frame(reference_uri)
    view = config.scoring_view()
    current = _scored_rows(store, view, manifest)
    if len(current) != len(served):
        raise DataError(f"the scoring input for {day} changed since it was scored: "
                        f"{len(current)} rows now, {len(served)} predictions in "
                        f"{manifest['predictions_uri']}; re-run batch_scoring for {day}",
                        runbook="drift-detected.md")

    def load_model() -> Any:  # only when the reference output is not cached yet
        return tracking.load_version(run_ctx.client, run_ctx.model_name, version)

    features = [c.name for c in config.feature_columns]
    missing = [c for c in features if c not in reference.columns]
    if missing:
        raise SchemaError(f"schema change between reference and current: column(s) {missing} "
                          f"are declared now but missing from the reference snapshot "
                          f"{reference_uri} of {run_ctx.model_name} v{version}; retrain so the "
                          "reference has them", runbook="schema-mismatch.md")
    # The output's reference: the champion on its own held-out rows (on its training rows it is
    # over-confident, which would read as drift on a normal day). Other rows stay NaN (ignored).
    import numpy as np

    from include.mlops_core import modeling

    def score_reference() -> np.ndarray:
        _, held_out = modeling.split(reference, config)
        ref_pred, ref_score = scoring.predict(load_model(), held_out[features], view)
        output = np.full(len(reference), np.nan)
        output[:len(held_out)] = _output(ref_pred, ref_score)
        return output

    reference_output = cached_reference_output(run_ctx, version, reference_uri, len(reference),
                                                score_reference)
    reference = reference[features].assign(**{PREDICTION_COLUMN: reference_output})
    # Only the champion's rows: canary rows come from another model.
    current_output = _output(served["prediction"].to_numpy(), served["score"].to_numpy())
    current_output = np.where(served["arm"].to_numpy() == scoring.CHAMPION, current_output, np.nan)
    current = current[features].assign(**{PREDICTION_COLUMN: current_output})
    numeric = [c.name for c in config.feature_columns
               if c.type in ("numeric", "integer", "boolean")] + [PREDICTION_COLUMN]
    categorical = [c.name for c in config.feature_columns if c.type == "categorical"]
    try:
        result = drift.detect_drift(reference, current, numeric=numeric, categorical=categorical,
                                    drift_share=config.monitoring.drift_share)
    except DataError as err:
        raise type(err)(f"drift check of {run_ctx.model_name} on {day} (current: "
                        f"{', '.join(manifest['input']['files'])}; reference: {reference_uri}): "
                        f"{err.args[0]}", runbook=err.runbook) from None
    html, payload = drift_report.render_report(reference, current, result, numeric=numeric,
                                        categorical=categorical)
    importance = champion_importance(run_ctx, version)
    html = drift_report.with_section(html, drift_report.importance_section(result, importance))
    payload["importance"] = importance
    folder = drift_dir(run_ctx, day)
    report_uri = join(folder, "report.html")
    result_uri = join(folder, "result.json")
    payload = {**payload, "partition_date": day.isoformat(), "model_version": version,
               "reference_uri": reference_uri, "predictions_uri": manifest["predictions_uri"],
               "report_uri": report_uri}
    store.write_bytes(report_uri, html.encode())
    store.write_bytes(result_uri, json.dumps(payload, indent=2, default=str).encode())

    run_id = manifest["scoring_run_id"]  # the scoring run of this day: one place to look
    client = run_ctx.client
    client.log_text(run_id, html, "drift/report.html")
    client.log_dict(run_id, payload, "drift/result.json")
    run_ctx.log_metrics({"drift.share": result.share,
                       "drift.columns_drifted": len(result.drifted_columns),
                       "drift.columns_checked": len(result.columns)}, run_id=run_id)
    client.set_tag(run_id, "mlops.drift", "detected" if result.dataset_drift else "none")
    client.set_tag(run_id, "mlops.drift_report", report_uri)
    if result.broken:
        for line in result.broken:
            log.error("Drift check of %s on %s: %s", run_ctx.model_name, day, line)
        raise DataError(f"drift check of {run_ctx.model_name} on {day} could not check "
                        f"{len(result.broken)} column(s): {'; '.join(result.broken)}. The other "
                        f"columns are in {report_uri}; no retrain was triggered",
                        runbook="drift-detected.md")
    outcome = {
        "dataset": config.name, "model_name": run_ctx.model_name, "model_version": version,
        "partition_date": day.isoformat(), "drifted": result.dataset_drift,
        "columns": result.ranked(importance), "share": round(result.share, 4),
        "threshold": config.monitoring.drift_share, "report_uri": report_uri,
        "result_uri": result_uri, "source_uri": training_source(run_ctx, reference_uri),
        "scoring_run_id": run_id,
    }
    log.info(result.summary_line(report_uri, importance))
    return outcome


def reference_output_uri(run_ctx: RunContext, version: str, reference_uri: str) -> str:
    """Where the champion's output on its held-out reference rows is kept: keyed by the model
    version and by everything else that output depends on (the snapshot, the declared feature
    columns, the split, the task), so a changed config gets its own cache object."""
    import hashlib

    config = run_ctx.config
    key = json.dumps({"version": str(version), "reference": reference_uri,
                      "features": [c.name for c in config.feature_columns],
                      "target": config.target, "task": config.task,
                      "test_size": config.training.test_size, "seed": config.training.seed,
                      "format": 1}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return join(run_ctx.artifacts_uri, run_ctx.model_name, "drift", "reference", f"v{version}",
                f"output-{digest}.parquet")


def cached_reference_output(run_ctx: RunContext, version: str, reference_uri: str, rows: int,
                            compute: Any) -> Any:
    """The reference's ``prediction`` column for the drift check: the champion's output on its
    held-out rows (NaN elsewhere), computed by ``compute()`` on the first day a version is
    checked and written once (create-only); later days read it back. A missing or unreadable
    object, or one of another length, is recomputed: the cache never changes the result."""
    import numpy as np
    import pandas as pd

    from include.mlops_core.storage import ObjectExistsError

    uri = reference_output_uri(run_ctx, version, reference_uri)
    store = run_ctx.store
    broken = False
    if store.exists(uri):
        broken = True  # unless it is read back below
        try:
            cached = ingestion.read_parquet_bytes(store.read_bytes(uri))["output"]
            if len(cached) == rows:
                return cached.to_numpy(dtype=np.float64)
            log.warning("Cached reference output %s has %d rows, the reference %d: recomputed",
                        uri, len(cached), rows)
        except Exception as err:  # noqa: BLE001 - a cache: recompute whatever went wrong
            log.warning("Cannot read the cached reference output %s (%s): recomputed", uri, err)
    output = np.asarray(compute(), dtype=np.float64)
    try:  # create-only, except over a broken object
        store.write_bytes(uri, ingestion.to_parquet_bytes(pd.DataFrame({"output": output})),
                          create_only=not broken)
    except ObjectExistsError:
        pass  # another run wrote it meanwhile, from the same version and snapshot
    return output


def champion_importance(run_ctx: RunContext, version: str) -> dict[str, float]:
    """The scoring champion's importance per input column (its share of mean |SHAP| on its
    held-out rows), from the explanation evaluate logged to its run; {} when it has none."""
    import tempfile

    from include.mlops_core import explain
    from include.mlops_core.pipeline import EXPLANATION_PATH

    try:
        run_id = run_ctx.client.get_model_version(run_ctx.model_name, version).run_id
        with tempfile.TemporaryDirectory() as folder:
            path = run_ctx.client.download_artifacts(run_id, EXPLANATION_PATH, folder)
            with open(path) as file:
                explanation = json.load(file)
    except Exception as err:  # noqa: BLE001 - older champions have none; the report says so
        log.info("No explanation of %s v%s to rank drifted columns by (%s)", run_ctx.model_name,
                 version, type(err).__name__)
        return {}
    return explain.importance_ranking(explanation)


def _scored_rows(store: Any, view: Any, manifest: dict[str, Any]) -> pd.DataFrame:
    """The very rows that were scored: the input files the predictions manifest lists."""
    import pandas as pd

    frames = []
    for uri in manifest["input"]["files"]:
        try:
            payload = store.read_bytes(uri)
        except Exception as err:
            raise DataError(f"missing scoring input {uri} of the predictions partition for "
                            f"{manifest['partition_date']}: {getattr(err, 'args', [err])[0]}",
                            runbook="missing-partition.md") from err
        frames.append(ingestion.conform(ingestion.read_file(uri, payload, view), view, uri))
    return pd.concat(frames, ignore_index=True)


def training_source(run_ctx: RunContext, snapshot_uri: str) -> str | None:
    """Where the champion's training data came from (its snapshot manifest), so an alert-
    triggered retrain reads the same source."""
    manifest_uri = snapshot_uri.removesuffix(".parquet") + ".json"
    try:
        return json.loads(run_ctx.store.read_bytes(manifest_uri)).get("source_uri")
    except Exception as err:  # noqa: BLE001 - optional: the retrain falls back to the config
        log.warning("Cannot read %s (%s); a triggered retrain uses the dataset's source_uri",
                    manifest_uri, err)
        return None


def _output(prediction: Any, score: Any) -> Any:
    """The model output that drifts: the score when there is one (classifiers), else the value."""
    import numpy as np

    score = np.asarray(score, dtype=float)
    return score if not np.isnan(score).all() else np.asarray(prediction, dtype=float)


# -- live performance -------------------------------------------------------------------------------
def join_labels(run_ctx: RunContext, day: date) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Labels of ``day`` joined to that day's served (and shadow) predictions by id."""
    config, store = run_ctx.config, run_ctx.store
    labels_config = config.labels_view()
    manifest, served = scoring.read_committed(store, run_ctx.artifacts_uri, run_ctx.model_name, day)
    labels = ingestion.ingest(labels_config, store, [day])
    frame = labels.frame.drop(columns=[ingestion.SOURCE_COLUMN])
    key, target = config.id_column, config.target
    where = ", ".join(f["uri"] for f in labels.manifest["files"])
    duplicated = int(frame[key].duplicated().sum())
    if duplicated:
        log.warning("%d duplicate ids in %s; keeping the last label of each", duplicated, where)
        frame = frame.drop_duplicates(key, keep="last")
    joined = served.merge(frame.rename(columns={target: "label"}), on=key, how="inner")
    unknown = len(frame) - len(joined)
    stats = {"label_rows": len(frame), "matched": len(joined), "unknown_ids": unknown,
             "labels_uri": where}
    if len(joined) == 0:
        examples = frame[key].astype(str).head(3).tolist()
        raise DataError(f"labels for unknown ids: none of the {len(frame)} label rows in {where} "
                        f"match a prediction in {manifest['predictions_uri']} (column {key!r}, "
                        f"e.g. {examples}); check that the labels belong to this date and model",
                        runbook="bad-data.md")
    if unknown:
        examples = sorted(set(frame[key].astype(str)) - set(joined[key].astype(str)))[:3]
        log.warning("Labels for unknown ids: %d of %d label rows in %s match no prediction in %s "
                    "(column %r, e.g. %s); they are left out of the live metrics", unknown,
                    len(frame), where, manifest["predictions_uri"], key, examples)
    if manifest.get("shadow_uri"):
        shadow = ingestion.read_parquet_bytes(store.read_bytes(manifest["shadow_uri"]))
        multi = [c for c in ("proba", "classes", "champion_proba", "champion_classes")
                 if c in shadow]
        joined = joined.merge(shadow[[key, "prediction", "score", "model_version",
                                      "champion_prediction", "champion_score", *multi]].rename(
            columns={"prediction": "shadow_prediction", "score": "shadow_score",
                     "model_version": "shadow_version", "proba": "shadow_proba",
                     "classes": "shadow_classes"}), on=key, how="left")
    return manifest, joined, stats


def _multi(rows: pd.DataFrame, prefix: str = "") -> dict[str, Any]:
    """A multi-class model's stored probabilities and classes (one model version's rows);
    nothing for binary and regression models, or predictions written before they were kept."""
    proba, classes = f"{prefix}proba", f"{prefix}classes"
    if proba not in rows or classes not in rows or not len(rows) \
            or rows[classes].isna().any() or rows[classes].nunique() != 1:
        return {}
    return {"proba": list(rows[proba]), "classes": rows[classes].iloc[0]}


def live_performance(run_ctx: RunContext, day: date) -> dict[str, Any]:
    """Live metrics of every model version that served ``day``, once its labels are in.

    Logged as a time series (step = days since 1970-01-01, timestamp = the day) on one
    monitoring run per model version (``live-v<version>`` in the model's experiment). A re-run
    logs no second point for the same day. Metrics of the champion's rows below
    ``monitoring.performance_floor`` are an alert.
    """
    from include.mlops_core.abtest import metric_values

    config = run_ctx.config
    manifest, joined, stats = join_labels(run_ctx, day)
    folder = live_dir(run_ctx, day)
    store = run_ctx.store
    # The index first: a day whose joined rows exist is always indexed (a re-run adds nothing).
    index_live_day(store, run_ctx.artifacts_uri, run_ctx.model_name, day, joined)
    store.write_bytes(join(folder, "joined.parquet"), ingestion.to_parquet_bytes(joined))
    by_version: dict[str, dict[str, float]] = {}
    for version, rows in joined.groupby("model_version"):
        by_version[str(version)] = {**metric_values(config.task, rows["label"], rows["prediction"],
                                                    rows["score"], **_multi(rows)),
                                    "rows": float(len(rows))}
    if "shadow_prediction" in joined:
        rows = joined.dropna(subset=["shadow_prediction"])
        if len(rows):
            version = str(rows["shadow_version"].iloc[0])
            shadow = metric_values(config.task, rows["label"], rows["shadow_prediction"],
                                   rows["shadow_score"], **_multi(rows, "shadow_"))
            # The champion on exactly the same rows: the delta is paired, not arm against arm.
            same_rows = metric_values(config.task, rows["label"], rows["champion_prediction"],
                                      rows["champion_score"], **_multi(rows, "champion_"))
            by_version.setdefault(version, {}).update(
                {f"shadow.{k}": v for k, v in shadow.items()}
                | {f"shadow.delta.{k}": v - same_rows[k] for k, v in shadow.items()
                   if k in same_rows}
                | {"shadow.rows": float(len(rows))})
    step = (day - date(1970, 1, 1)).days
    timestamp = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
    run_ids = {}
    for version, values in by_version.items():
        run_ids[version] = _log_live(run_ctx, version, values, step=step, timestamp=timestamp,
                                     extra={"live.unknown_label_ids": float(stats["unknown_ids"])})
    champion = by_version.get(str(manifest["champion_version"]), {})
    mv = run_ctx.client.get_model_version(run_ctx.model_name, manifest["champion_version"])
    snapshot = mv.tags.get("mlops.data_snapshot")
    failed, unmeasured = floor_check(config.monitoring.performance_floor, champion)
    if unmeasured:
        log.warning("Not checked against the floor on %s: %s is undefined on this day's "
                    "labelled rows (e.g. ROC AUC when they hold a single class); the other bars "
                    "are checked", day, ", ".join(unmeasured))
    result = {"dataset": config.name, "model_name": run_ctx.model_name,
              "model_version": manifest["champion_version"], "partition_date": day.isoformat(),
              "metrics": {v: {k: round(x, 6) for k, x in m.items()} for v, m in by_version.items()},
              "label_rows": stats["label_rows"], "matched": stats["matched"],
              "unknown_ids": stats["unknown_ids"], "below_floor": bool(failed), "failed": failed,
              "unmeasured": unmeasured,
              "floor": [str(t) for t in config.monitoring.performance_floor],
              "monitor_runs": run_ids,
              "source_uri": training_source(run_ctx, snapshot) if snapshot else None}
    run_ctx.store.write_bytes(join(folder, "metrics.json"), json.dumps(result, indent=2).encode())
    summary = "; ".join(f"v{v}: " + ", ".join(f"{k}={x:.4f}" for k, x in m.items() if k != "rows")
                        + f" ({int(m.get('rows', 0))} rows)" for v, m in by_version.items())
    if failed:
        log.error("ALERT: live performance of %s v%s on %s is below the floor: %s. Retraining is "
                  "triggered through the performance_degraded Asset (runbook: "
                  "docs/runbooks/performance-degraded.md)", run_ctx.model_name,
                  manifest["champion_version"], day, "; ".join(failed))
    log.info("Live metrics for %s on %s from %d labelled rows: %s", run_ctx.model_name, day,
             stats["matched"], summary)
    return result


def floor_check(floor: list[Any], observed: dict[str, float]) -> tuple[list[str], list[str]]:
    """(bars not met, each with the observed value; metrics the day's labels leave undefined).

    A metric that was computed and is NaN is undefined on these rows (ROC AUC of labels that
    hold one class): its bar is not checked today and is reported, not alerted on, since such
    a day says nothing about the model. A metric that was not computed at all (no labelled rows
    of the champion) fails its bar."""
    failed, unmeasured = [], []
    for threshold in floor:
        if threshold.metric not in observed:
            failed.append(f"{threshold} (not measured: no labelled rows of the champion)")
            continue
        value = float(observed[threshold.metric])
        if value != value:
            unmeasured.append(threshold.metric)
        elif not threshold.holds(value):
            failed.append(f"{threshold} (observed {value:.4f})")
    return failed, sorted(set(unmeasured))


def _log_live(run_ctx: RunContext, version: str, values: dict[str, float], *, step: int, timestamp: int,
              extra: dict[str, float]) -> str:
    """Log one day's point of each live metric on the version's monitoring run, once."""
    import math

    from mlflow.entities import Metric

    client = run_ctx.client
    run_id = tracking.find_or_create_run(
        client, experiment=run_ctx.model_name, dag_id="live", dag_run_id=f"v{version}",
        run_name=f"live-v{version}", tags={"mlops.monitor": "live",
                                          "mlops.model_version": str(version)})
    # A row count is logged last: its point for this step means the day is done (a shadow-only
    # version has no served rows, only shadow.rows).
    marker = "live.rows" if "rows" in values else "live.shadow.rows"
    logged = {m.step for m in client.get_metric_history(run_id, marker)}
    if step in logged:
        log.info("Live metrics of v%s for step %d are already logged (re-run)", version, step)
        return run_id
    metrics = [Metric(f"live.{k}", float(v), timestamp, step)
               for k, v in {**values, **extra}.items() if not math.isnan(v)]
    client.log_batch(run_id, metrics=[m for m in metrics if m.key != marker])
    client.log_batch(run_id, metrics=[m for m in metrics if m.key == marker])
    return run_id


# -- A/B decision -----------------------------------------------------------------------------------
def index_live_day(store: Any, artifacts_uri: str, model_name: str, day: date,
                   joined: pd.DataFrame) -> list[str]:
    """Record, once, that ``day``'s labelled rows hold each model version in them (served or
    shadow): an empty-ish ``live_index/v<version>/date=<day>/entry.json``, create-only. A re-run
    of the day finds its entries there and writes nothing; a version that left the day on a
    re-run keeps a stale entry, which costs the A/B decision one read and changes nothing (it
    filters the rows by version as before)."""
    from include.mlops_core.storage import ObjectExistsError

    versions: set[str] = set()
    for column in ("model_version", "shadow_version"):
        if column in joined:
            versions |= set(joined[column].dropna().astype(str))
    root = live_index_root(artifacts_uri, model_name)
    entry = json.dumps({"partition_date": day.isoformat()}).encode()
    for version in sorted(versions):
        try:
            store.write_bytes(join(root, f"v{version}", f"date={day.isoformat()}", INDEX_ENTRY),
                              entry, create_only=True)
        except ObjectExistsError:
            pass
    return sorted(versions)


def index_live_history(store: Any, artifacts_uri: str, model_name: str) -> None:
    """Index the live days written before the index existed: one scan of the whole live
    history, once per model (``live_index/complete.json`` records that it was done)."""
    from include.mlops_core.storage import ObjectExistsError

    root = live_index_root(artifacts_uri, model_name)
    complete = join(root, INDEX_COMPLETE)
    if store.exists(complete):
        return
    live_root = join(artifacts_uri, model_name, "live")
    days = 0
    for prefix in store.list_prefixes(live_root):
        joined = _joined_rows(store, join(live_root, prefix)) if prefix.startswith("date=") \
            else None
        if joined is not None:
            index_live_day(store, artifacts_uri, model_name,
                           date.fromisoformat(prefix.removeprefix("date=")), joined)
            days += 1
    try:
        store.write_bytes(complete, json.dumps({"indexed_days": days, "indexed_at": datetime.now(
            UTC).isoformat()}).encode(), create_only=True)
    except ObjectExistsError:
        pass
    log.info("Indexed %d live day(s) of %s by model version", days, model_name)


def _joined_rows(store: Any, day_dir: str) -> pd.DataFrame | None:
    """A live day's ``joined.parquet``, or None when the day has none (one read, no HEAD)."""
    from include.mlops_core.storage import ObjectNotFoundError

    try:
        return ingestion.read_parquet_bytes(store.read_bytes(join(day_dir, "joined.parquet")))
    except ObjectNotFoundError:
        return None


AB_COLUMNS = ("partition_date", "model_version", "label", "prediction", "score")


def ab_history(store: Any, artifacts_uri: str, model_name: str, day: date,
               version: str) -> pd.DataFrame:
    """The labelled rows of every live day up to ``day`` that holds ``version`` (served or
    shadow), oldest day first, each day's rows as ``live_performance`` joined them.

    These are all the rows the A/B decision on that challenger uses (it keeps only the days on
    which the challenger served or shadow-scored), read through the live index: the cost is
    the challenger's days, not the whole live history."""
    import pandas as pd

    index_live_history(store, artifacts_uri, model_name)
    live_root = join(artifacts_uri, model_name, "live")
    frames = []
    for prefix in store.list_prefixes(join(live_index_root(artifacts_uri, model_name),
                                           f"v{version}")):
        joined = _joined_rows(store, join(live_root, prefix)) \
            if prefix <= f"date={day.isoformat()}" else None
        if joined is not None:
            frames.append(joined)
    return (pd.concat(frames, ignore_index=True) if frames
            else pd.DataFrame({c: pd.Series(dtype=object) for c in AB_COLUMNS}))


def ab_statistics(config: Any, rows: pd.DataFrame, *, challenger: str, champion: str
                  ) -> tuple[dict[str, int], dict[str, dict[str, float]], Any]:
    """(labelled rows per arm, live metrics per arm, the bootstrap interval or None) of the
    challenger against the champion, from the live rows of :func:`ab_history`.

    The interval resamples every labelled row of the trial with a fixed seed, so it needs those
    rows, not a summary of them; they are the challenger's days only."""
    from include.mlops_core import abtest

    cv, hv = challenger, champion
    metric = config.comparison_metric
    paired = config.rollout.mode == "shadow"
    if paired:
        rows = rows[(rows.get("shadow_version") == cv) & (rows["model_version"] == hv)] \
            if "shadow_version" in rows else rows.iloc[0:0]
        arms = {"champion": {"y": rows["label"], "prediction": rows.get("prediction"),
                             "score": rows.get("score"), **_multi(rows)},
                "challenger": {"y": rows["label"], "prediction": rows.get("shadow_prediction"),
                               "score": rows.get("shadow_score"), **_multi(rows, "shadow_")}}
    else:
        if len(rows):  # only days on which the challenger served: the same period for both arms
            days = set(rows.loc[rows["model_version"] == cv, "partition_date"])
            rows = rows[rows["partition_date"].isin(days)]
        champ_rows = rows[rows["model_version"] == hv] if len(rows) else rows
        chal_rows = rows[rows["model_version"] == cv] if len(rows) else rows
        arms = {arm: {"y": r["label"], "prediction": r["prediction"], "score": r["score"],
                      **_multi(r)}
                for arm, r in (("champion", champ_rows), ("challenger", chal_rows))}
    counts = {arm: int(len(a["y"])) for arm, a in arms.items()}
    live = {arm: abtest.metric_values(config.task, a["y"], a["prediction"], a["score"],
                                      proba=a.get("proba"), classes=a.get("classes"))
            if counts[arm] else {} for arm, a in arms.items()}
    interval = None
    if min(counts.values()) >= config.rollout.min_labelled_rows:
        interval = abtest.bootstrap_difference(
            config.task, metric, *({k: v.to_numpy() if hasattr(v, "to_numpy") else v
                                    for k, v in arms[a].items()}
                                   for a in ("champion", "challenger")),
            paired=paired, confidence=config.rollout.confidence,
            resamples=config.rollout.bootstrap_resamples, seed=config.training.seed)
    return counts, live, interval


def ab_decision(run_ctx: RunContext, day: date, *, dag_context: dict[str, Any]) -> dict[str, Any]:
    """Promote, keep or reject the challenger from all labelled rows it has served (canary) or
    shadow-scored (shadow) so far, through the training gate plus a significance check. Only
    the live days that hold the challenger are read (:func:`ab_history`)."""
    from include.mlops_core.gate import ab_card, decide_ab
    from include.mlops_core.pipeline import promote

    config, client, name = run_ctx.config, run_ctx.client, run_ctx.model_name
    champion = tracking.alias_version(client, name)
    challenger = tracking.alias_version(client, name, scoring.CHALLENGER)
    if config.rollout.mode == "direct" or challenger is None or champion is None or \
            str(challenger.version) == str(champion.version):
        return {"verdict": "none", "reason": f"no challenger of {name} to decide on "
                                             f"(rollout {config.rollout.mode})"}
    cv, hv = str(challenger.version), str(champion.version)
    rows = ab_history(run_ctx.store, run_ctx.artifacts_uri, name, day, cv)
    counts, live, interval = ab_statistics(config, rows, challenger=cv, champion=hv)
    started = challenger.tags.get("audit.challenger.promoted_at")
    trial_days = (day - datetime.fromisoformat(started).date()).days if started else None
    outcome = decide_ab(config, challenger=live["challenger"],
                        champion={"version": hv, "metrics": live["champion"]},
                        interval=interval, rows=counts, trial_days=trial_days)
    card = ab_card(config=config, outcome=outcome, live=live, counts=counts,
                      champion=hv, challenger=cv, context=dag_context,
                      loosened=list(run_ctx.loosened))
    folder = join(run_ctx.artifacts_uri, name, "ab", f"v{cv}", f"date={day.isoformat()}")
    card_uri = join(folder, "promotion_card.json")
    run_ctx.store.write_bytes(card_uri, json.dumps(card, indent=2, default=str).encode())
    from include.mlops_core.gate import render_card_html

    html = render_card_html(card)
    run_ctx.store.write_bytes(join(folder, "promotion_card.html"), html.encode())
    client.log_dict(run_ctx.mlflow_run_id, card, f"ab/v{cv}/promotion_card.json")
    client.log_text(run_ctx.mlflow_run_id, html, f"ab/v{cv}/promotion_card.html")
    log.info(outcome.log_line(name, cv))
    result = {"verdict": outcome.verdict, "challenger_version": cv, "champion_version": hv,
              "reasons": outcome.decision.reasons, "card_uri": card_uri, "rows": counts,
              "interval": outcome.interval}
    if outcome.verdict == "promote":
        result["promotion"] = promote(run_ctx, version=cv, reasons=outcome.decision.reasons,
                                      dag_context=dag_context, compared_with=hv)
        client.delete_registered_model_alias(name, scoring.CHALLENGER)
    elif outcome.verdict == "reject":
        client.set_model_version_tag(name, cv, "mlops.ab", "rejected")
        client.set_model_version_tag(name, cv, "mlops.ab_reason",
                                     "; ".join(outcome.decision.reasons)[:4000])
        client.delete_registered_model_alias(name, scoring.CHALLENGER)
    return result
