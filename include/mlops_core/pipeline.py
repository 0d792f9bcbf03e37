"""The training pipeline's stages as plain functions: check → ingest → validate → features →
train → evaluate → gate → register → promote.

``check_changed`` is cheap and needs no MLflow run. Every later stage reads its inputs by URI,
writes its outputs to a per-run folder keyed by the logical date (a re-run overwrites the same
keys, never adds new ones), logs to the DAG run's MLflow run, and returns a small dict for XCom.
Airflow operators (plugins/mlops_airflow) only wire these up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from include.mlops_core import gate as gates
from include.mlops_core import ingest as ingestion
from include.mlops_core import metrics as metric_module
from include.mlops_core import modeling, reproducibility, significance, tracking, validation
from include.mlops_core.config import DatasetConfig
from include.mlops_core.errors import PromotionError, ValidationFailedError
from include.mlops_core.storage import ObjectExistsError, ObjectStore, join, safe_name

log = logging.getLogger(__name__)

LOOSENED_TAG = "mlops.gate.loosened"  # run and model version: promoted under a loosened gate


@dataclass(frozen=True)
class RunContext:
    """What every stage needs: config, storage, the MLflow client and this DAG run's places."""

    config: DatasetConfig
    store: ObjectStore
    client: Any  # mlflow.MlflowClient
    mlflow_run_id: str
    artifacts_uri: str
    run_key: str  # the logical date, e.g. 2025-01-01T000000
    # How this run's overrides loosen the dataset's gate (include/mlops_core/policy.py), when the
    # deployment allows it: recorded on the card, the MLflow run, the model version and the audit.
    loosened: tuple[str, ...] = ()

    @property
    def model_name(self) -> str:
        return self.config.registered_model_name

    @property
    def run_dir(self) -> str:
        return join(self.artifacts_uri, self.model_name, "runs", self.run_key)

    def put_json(self, name: str, payload: dict[str, Any], *, mlflow_path: str | None = None) -> str:
        uri = join(self.run_dir, name)
        self.store.write_bytes(uri, json.dumps(payload, indent=2, default=str).encode())
        if mlflow_path:
            self.client.log_dict(self.mlflow_run_id, payload, mlflow_path)
        return uri

    def put_bytes(self, name: str, payload: bytes, *, mlflow_path: str) -> str:
        """Write ``payload`` (a PNG plot) to the run folder and log the same bytes to the MLflow
        run at ``mlflow_path``."""
        import tempfile
        from pathlib import Path, PurePosixPath

        uri = join(self.run_dir, name)
        self.store.write_bytes(uri, payload)
        where = PurePosixPath(mlflow_path)
        with tempfile.TemporaryDirectory(prefix="mlops-artifact-") as tmp:
            local = Path(tmp, where.name)
            local.write_bytes(payload)
            self.client.log_artifact(self.mlflow_run_id, str(local),
                                     str(where.parent) if where.parent.parts else None)
        return uri

    def get_json(self, uri: str) -> dict[str, Any]:
        return json.loads(self.store.read_bytes(uri))

    def read_frame(self, uri: str) -> Any:
        return ingestion.read_parquet_bytes(self.store.read_bytes(uri))

    def log_metrics(self, values: dict[str, float], *, run_id: str | None = None) -> None:
        """Log ``values`` (NaN left out) to this DAG run's MLflow run, or to ``run_id``."""
        import math

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in values.items() if not math.isnan(v)]
        for i in range(0, len(metrics), 1000):  # log_batch takes 1000 metrics per request
            self.client.log_batch(run_id or self.mlflow_run_id, metrics=metrics[i:i + 1000])


def run_key(logical_date: datetime) -> str:
    return logical_date.astimezone(UTC).strftime("%Y-%m-%dT%H%M%S")


# -- ingest -----------------------------------------------------------------------------------------
def ingest(run_ctx: RunContext, dates: list[date]) -> dict[str, Any]:
    """List, read and schema-check the partitions; write a snapshot and the manifest.

    Snapshots are content-addressed (data fingerprint + declared schema): data already ingested
    is not read again, its snapshot and manifest are reused (an unchanged re-run costs a listing).
    """
    started = time.monotonic()
    config = run_ctx.config
    listing = ingestion.discover(config, run_ctx.store, dates)
    schema = hashlib.sha256(json.dumps([c.model_dump() for c in config.columns],
                                       sort_keys=True).encode()).hexdigest()
    snapshot_id = f"{listing.fingerprint[:40]}-{schema[:8]}"
    snapshot_uri = join(run_ctx.artifacts_uri, run_ctx.model_name, "snapshots", f"{snapshot_id}.parquet")
    snapshot_manifest_uri = join(run_ctx.artifacts_uri, run_ctx.model_name, "snapshots",
                                 f"{snapshot_id}.json")
    if run_ctx.store.exists(snapshot_manifest_uri):
        manifest = run_ctx.get_json(snapshot_manifest_uri)
        log.info("Data unchanged since snapshot %s: reusing it (%d rows) instead of re-reading "
                 "%d file(s)", snapshot_uri, manifest["row_count"], len(listing.files))
    else:
        result = ingestion.ingest(config, run_ctx.store, dates, listing)
        manifest = {**result.manifest, "snapshot_uri": snapshot_uri}
        run_ctx.store.write_bytes(snapshot_uri, ingestion.to_parquet_bytes(result.frame))
        # Written last: its presence means the snapshot next to it is complete.
        run_ctx.store.write_bytes(snapshot_manifest_uri, json.dumps(manifest, default=str).encode())
    manifest["dates"] = [d.isoformat() for d in dates]
    manifest_uri = run_ctx.put_json("manifest.json", manifest, mlflow_path="data/manifest.json")
    run_ctx.client.set_tag(run_ctx.mlflow_run_id, "mlops.data_fingerprint", manifest["fingerprint"])
    run_ctx.client.log_metric(run_ctx.mlflow_run_id, "data.rows", manifest["row_count"])
    log.info("Ingested %d rows from %d file(s) in %s (fingerprint %s) in %.1fs; manifest %s",
             manifest["row_count"], len(manifest["files"]), ", ".join(manifest["partitions"]),
             manifest["fingerprint"][:12], time.monotonic() - started, manifest_uri)
    return {"manifest_uri": manifest_uri, "snapshot_uri": snapshot_uri,
            "fingerprint": manifest["fingerprint"], "rows": manifest["row_count"]}


def check_changed(config: DatasetConfig, store: ObjectStore, dates: list[date],
                  champion: dict[str, Any] | None, *, dag_run_id: str,
                  force: bool = False,
                  champion_manifest: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Is there anything new to train? Same data + ML code + training params as the champion: no.

    Runs first and cheaply: the data fingerprint comes from listing the partitions (no file is
    read) and ``champion`` from one registry call (:func:`tracking.alias_version` over
    :class:`tracking.RestRegistry`, no mlflow import), so an unchanged run costs a listing and a
    lookup, and leaves no MLflow run behind.

    :param champion: ``{"version", "run_id", "tags"}`` of the current champion, or None
    :param champion_manifest: reads the champion's reproducibility manifest; called only when
        this run differs from a champion, to name what differs (``differences``: files added,
        removed or changed, source modules, params with old and new values). Without it, or
        when it fails, the champion's tags say what they can.
    """
    listing = ingestion.discover(config, store, dates)
    key = reproducibility.repro_key(listing.fingerprint, config)
    name = config.registered_model_name
    base = {"repro_key": key, "fingerprint": listing.fingerprint, "files": len(listing.files)}
    if champion is not None and champion["tags"].get("airflow.run_id") == dag_run_id:
        # A cleared-and-rerun DAG run that already produced the champion: retraining would
        # compare the champion with itself.
        return {**base, "changed": False,
                "reason": f"this DAG run already produced champion {name} v{champion['version']}; "
                          "trigger a new DAG run to retrain"}
    if force:
        return {**base, "changed": True, "reason": "forced by the 'force' param"}
    if champion is not None and champion["tags"].get("mlops.repro_key") == key:
        return {**base, "changed": False, "reason": (
            f"data fingerprint {listing.fingerprint[:12]} ({len(listing.files)} file(s)), ML code "
            f"(sources {reproducibility.source_hash()[:12]}) and training params equal those of "
            f"champion {name} v{champion['version']} (MLflow run {champion['run_id']}); trigger "
            "with force=true to retrain anyway")}
    if champion is None:
        return {**base, "changed": True, "reason": "no champion yet"}
    found = _differences(champion, champion_manifest, listing.files, config)
    why = f"differs from champion {name} v{champion['version']}: " + (
        "; ".join(found) if found else
        "the reproducibility key differs, but neither the files, the training code nor the "
        "params do (the key's recipe changed)")
    return {**base, "changed": True, "reason": why, "differences": found}


def _differences(champion: dict[str, Any], read_manifest: Callable[[], dict[str, Any]] | None,
                 files: list[dict[str, Any]], config: DatasetConfig) -> list[str]:
    """:func:`reproducibility.differences` against the champion's manifest, or, when it cannot
    be read, against what the version's tags record (fingerprint, source hash, training params)."""
    manifest = None
    if read_manifest is not None:
        try:
            manifest = read_manifest()
        except Exception as err:  # only the explanation is lost, never the run: say so
            log.warning("Could not read the reproducibility manifest of champion v%s (%s: %s); "
                        "comparing with its tags", champion["version"], type(err).__name__, err)
    if manifest is None:
        tags = champion["tags"]
        manifest = {"data": {"fingerprint": tags.get("mlops.data_fingerprint")},
                    "source_hash": tags.get("mlops.source_hash")}
        try:
            manifest["params"] = {"training": json.loads(tags["mlops.params"])}
        except (KeyError, ValueError):
            pass
    return reproducibility.differences(manifest, files, config)


# -- validate ---------------------------------------------------------------------------------------
def validate(run_ctx: RunContext, snapshot_uri: str) -> dict[str, Any]:
    frame = run_ctx.read_frame(snapshot_uri)
    outcome = validation.validate(frame, run_ctx.config)
    result_uri = run_ctx.put_json("validation.json", outcome["result"],
                                mlflow_path="validation/gx_result.json")
    run_ctx.client.log_metric(run_ctx.mlflow_run_id, "validation.failed_expectations",
                            len(outcome["failures"]))
    run_ctx.client.set_tag(run_ctx.mlflow_run_id, "mlops.validation",
                         "passed" if outcome["success"] else "failed")
    stats = outcome["statistics"]
    if not outcome["success"]:
        lines = [validation.describe_failure(f) for f in outcome["failures"]]
        for line in lines:
            log.error("Validation failure: %s", line)
        raise ValidationFailedError(
            f"data validation failed for dataset {run_ctx.config.name!r}: "
            f"{len(lines)} of {stats.get('evaluated_expectations')} expectations failed. "
            f"First: {lines[0]}. Full result: {result_uri}")
    log.info("Validation passed: %s expectations on %d rows; result %s",
             stats.get("evaluated_expectations"), len(frame), result_uri)
    return {"validation_uri": result_uri, "expectations": stats.get("evaluated_expectations")}


# -- features ---------------------------------------------------------------------------------------
def build_features(run_ctx: RunContext, snapshot_uri: str) -> dict[str, Any]:
    frame = run_ctx.read_frame(snapshot_uri)
    train, test = modeling.split(frame, run_ctx.config)
    train_uri = join(run_ctx.run_dir, "train.parquet")
    test_uri = join(run_ctx.run_dir, "test.parquet")
    run_ctx.store.write_bytes(train_uri, ingestion.to_parquet_bytes(train))
    run_ctx.store.write_bytes(test_uri, ingestion.to_parquet_bytes(test))
    plan = modeling.feature_plan(run_ctx.config)
    run_ctx.put_json("features.json", {"plan": plan, "train_rows": len(train), "test_rows": len(test)},
                   mlflow_path="features/plan.json")
    log.info("Split %d rows into %d train / %d held-out; features: %d numeric, %d categorical",
             len(frame), len(train), len(test), len(plan["numeric"]), len(plan["categorical"]))
    return {"train_uri": train_uri, "test_uri": test_uri, "train_rows": len(train),
            "test_rows": len(test)}


# -- train ------------------------------------------------------------------------------------------
def train(run_ctx: RunContext, *, train_uri: str, manifest_uri: str, candidate: str | None = None,
          tuned: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit one candidate (default: the only or first one) with ``tuned`` (the tune step's best
    params) over its fixed hyperparameters, and log it to ``run_ctx``'s MLflow run.

    The reproducibility key stays the whole config's (what check_changed compares); what this
    model was trained with (candidate, family, hyperparameters, tuned params) goes into the
    manifest's ``trained`` section and the run's params."""
    from mlflow.entities import Param

    full = run_ctx.config
    label = candidate or full.training.all_candidates[0].label
    config = full.candidate_view(label, tuned)
    data_manifest = run_ctx.get_json(manifest_uri)
    repro = reproducibility.manifest(config=full, data_manifest=data_manifest,
                                     snapshot_uri=data_manifest["snapshot_uri"])
    repro["trained"] = {"candidate": label, "family": config.training.family,
                        "hyperparameters": config.training.hyperparameters,
                        "tuned": dict(tuned or {})}
    run = run_ctx.client.get_run(run_ctx.mlflow_run_id)
    if run.data.tags.get("mlops.model_uri") and \
            run.data.tags.get("mlops.model_repro_key") == repro["repro_key"] and \
            run.data.tags.get("mlops.candidate", label) == label:
        # A retry after the model was logged: reuse it instead of logging a second one.
        log.info("Run %s already holds the model for this data/code/params: %s",
                 run_ctx.mlflow_run_id, run.data.tags["mlops.model_uri"])
        metrics = {"train_seconds": run.data.metrics.get("train_seconds"),
                   "train_rows": int(run.data.params.get("train_rows", 0))}
        return {"model_uri": run.data.tags["mlops.model_uri"], "repro_key": repro["repro_key"],
                "reproducibility_uri": run_ctx.put_json("reproducibility.json", repro),
                "metrics": metrics, "candidate": label, "family": config.training.family}

    frame = run_ctx.read_frame(train_uri)
    started = time.monotonic()
    model = modeling.train(frame, config)
    train_seconds = time.monotonic() - started
    params = {"dataset": config.name, "task": config.task, "target": config.target,
              "family": config.training.family, "seed": config.training.seed,
              "test_size": config.training.test_size, "train_rows": len(frame),
              **{f"hp.{k}": v for k, v in config.training.hyperparameters.items()}}
    existing = run.data.params
    run_ctx.client.log_batch(run_ctx.mlflow_run_id, params=[
        Param(k, str(v)) for k, v in params.items() if k not in existing])
    _log_dataset(run_ctx, frame, data_manifest)
    # register tags the version from this file: what this model was trained from, not a second
    # look at the code and packages (that could differ by then, and costs 0.15 s).
    repro_uri = run_ctx.put_json("reproducibility.json", repro, mlflow_path="reproducibility.json")
    features = [c.name for c in config.feature_columns]
    info = tracking.log_sklearn_model(run_id=run_ctx.mlflow_run_id, model=model, name="model",
                                      input_example=frame[features].head(5),
                                      trusted_types=modeling.untrusted_types(model))
    run_ctx.client.log_metric(run_ctx.mlflow_run_id, "train_seconds", train_seconds)
    run_ctx.client.set_tag(run_ctx.mlflow_run_id, "mlops.model_uri", info.model_uri)
    run_ctx.client.set_tag(run_ctx.mlflow_run_id, "mlops.model_repro_key", repro["repro_key"])
    run_ctx.client.set_tag(run_ctx.mlflow_run_id, "mlops.candidate", label)
    log.info("Trained %s (%s) on %d rows in %.1fs; model %s", config.registered_model_name,
             config.training.family if label == config.training.family
             else f"candidate {label}, {config.training.family}", len(frame), train_seconds,
             info.model_uri)
    return {"model_uri": info.model_uri, "repro_key": repro["repro_key"],
            "reproducibility_uri": repro_uri, "candidate": label,
            "family": config.training.family,
            "metrics": {"train_seconds": round(train_seconds, 3), "train_rows": len(frame)}}


def candidate_stage(run_ctx: RunContext, label: str) -> RunContext:
    """The stage a candidate trains in when several do: its own MLflow child run of the DAG
    run's run (found again by tag on a retry) and its own folder under the run's."""
    from dataclasses import replace

    client = run_ctx.client
    parent = client.get_run(run_ctx.mlflow_run_id)
    experiment_id = parent.info.experiment_id
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{run_ctx.mlflow_run_id}' and "
                      f"tags.`mlops.candidate` = '{label}' and tags.`mlops.child` = 'candidate'",
        max_results=1)
    if found:
        run_id = found[0].info.run_id
        if found[0].info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(
            experiment_id, run_name=f"{parent.info.run_name}:{label}",
            tags={"mlflow.parentRunId": run_ctx.mlflow_run_id, "mlops.candidate": label,
                  "mlops.child": "candidate"}).info.run_id
    return replace(run_ctx, mlflow_run_id=run_id,
                   run_key=f"{run_ctx.run_key}/candidates/{safe_name(label)}")


def select(run_ctx: RunContext, *, trained: list[dict[str, Any]], test_uri: str) -> dict[str, Any]:
    """Compare the trained candidates on the same held-out rows and keep the best by the
    champion metric (ties: the one listed first). Each candidate's metrics go to its child
    run; the table (every candidate, its metrics, the difference to the best and that
    difference's paired interval) to ``selection.json`` and the promotion card. The winner's
    model, reproducibility manifest and params become the DAG run's run's, as with one
    candidate, so register, the card and check_changed read them where they always do."""
    from include.mlops_core.config import HIGHER_IS_BETTER
    from include.mlops_core.model_loading import load_model

    config = run_ctx.config
    metric = config.comparison_metric
    order = [c.label for c in config.training.all_candidates]
    trained = sorted(trained, key=lambda t: order.index(t["candidate"])
                     if t.get("candidate") in order else len(order))
    if len(trained) == 1:
        only = trained[0]
        table = [{"candidate": only.get("candidate"), "family": only.get("family"),
                  "selected": True, "tuning": only.get("tuning"),
                  "mlflow_run_id": only.get("mlflow_run_id")}]
        uri = run_ctx.put_json("selection.json", {"metric": metric, "candidates": table})
        return {**only, "selection_uri": uri}
    test = run_ctx.read_frame(test_uri)
    y = modeling.target(test, config)
    scored = []
    for item in trained:
        model = load_model(item["model_uri"], item["family"])
        scores = modeling.scores(model, test, config)
        values = metric_module.compute(config.task, y, scores)
        run_ctx.log_metrics({f"select.{k}": v for k, v in values.items()},
                          run_id=item["mlflow_run_id"])
        scored.append((item, scores, values))
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    best_index = max(range(len(scored)), key=lambda i: (
        sign * scored[i][2].get(metric, float("nan"))
        if scored[i][2].get(metric) == scored[i][2].get(metric) else float("-inf"), -i))
    winner, winner_scores, winner_values = scored[best_index]
    table = []
    for item, scores, values in scored:
        row = {"candidate": item["candidate"], "family": item["family"],
               "selected": item is winner, "metric": metric, "value": values.get(metric),
               "metrics": values, "tuning": item.get("tuning"),
               "model_uri": item["model_uri"], "mlflow_run_id": item["mlflow_run_id"]}
        if item is not winner:
            try:
                test_result = significance.paired_test(
                    config.task, metric, y, scores, winner_scores,
                    confidence=config.gate.significance_confidence,
                    resamples=config.gate.bootstrap_resamples, seed=config.training.seed)
                row.update(difference_to_best=test_result.difference,
                           interval=[test_result.low, test_result.high], test=test_result.test,
                           p_value=test_result.p_value, description=test_result.describe())
            except ValueError as err:
                row["test_error"] = str(err)
        table.append(row)
    selection = {"metric": metric, "test_rows": len(test), "selected": winner["candidate"],
                 "candidates": table}
    uri = run_ctx.put_json("selection.json", selection, mlflow_path="selection/selection.json")
    # The winner becomes the DAG run's model: its manifest and model URI on the run's run.
    repro = run_ctx.get_json(winner["reproducibility_uri"])
    repro_uri = run_ctx.put_json("reproducibility.json", repro, mlflow_path="reproducibility.json")
    from mlflow.entities import Param

    existing = run_ctx.client.get_run(run_ctx.mlflow_run_id).data.params
    params = {"candidate": winner["candidate"], "family": winner["family"],
              **{f"hp.{k}": v for k, v in repro["trained"]["hyperparameters"].items()}}
    run_ctx.client.log_batch(run_ctx.mlflow_run_id, params=[
        Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing][:100])
    for key, value in (("mlops.model_uri", winner["model_uri"]), ("mlops.candidate",
                                                                  winner["candidate"]),
                       ("mlops.model_repro_key", winner["repro_key"])):
        run_ctx.client.set_tag(run_ctx.mlflow_run_id, key, value)
    log.info("Selected %s by %s on %d held-out rows: %s", winner["candidate"], metric, len(test),
             "; ".join(f"{r['candidate']} {r['value']:.4f}" + (
                 f" (the selected is better by {r['difference_to_best']:+.4f}, {r['test']} "
                 f"[{r['interval'][0]:+.4f}, {r['interval'][1]:+.4f}])"
                 if r.get("interval") else "") for r in table))
    return {**winner, "reproducibility_uri": repro_uri, "selection_uri": uri,
            "metrics": {**winner.get("metrics", {}), **{f"select.{k}": v
                                                        for k, v in winner_values.items()}}}


def _log_dataset(run_ctx: RunContext, frame: Any, manifest: dict[str, Any]) -> None:
    run_ctx.client.log_inputs(run_ctx.mlflow_run_id, datasets=[tracking.dataset_input(
        frame, source=manifest["snapshot_uri"], name=run_ctx.config.name,
        targets=run_ctx.config.target, digest=manifest["fingerprint"][:32], context="training")])


# -- evaluate ---------------------------------------------------------------------------------------
def evaluate(run_ctx: RunContext, *, model_uri: str, test_uri: str,
             family: str | None = None, candidate: str | None = None) -> dict[str, Any]:
    """Held-out metrics of the model at ``model_uri`` (candidate ``candidate`` of model
    ``family``; default the config's first), its plot, its explanation (SHAP and permutation
    importance), and the champion's metrics and the paired test on the same rows."""
    from include.mlops_core.errors import ModelRefusedError
    from include.mlops_core.model_loading import load_model

    config = run_ctx.config
    test = run_ctx.read_frame(test_uri)
    first = config.training.all_candidates[0]
    model = load_model(model_uri, family or first.family)
    held_out = modeling.metrics(model, test, config)
    slices = modeling.slice_metrics(model, test, config)
    run_ctx.log_metrics(held_out)
    for value, values in slices.items():
        run_ctx.log_metrics({f"slice.{config.slice_column}.{safe_name(value)}.{k}": v
                             for k, v in values.items()})
    plot_name = "confusion_matrix.png" if config.task == "classification" else "residuals.png"
    plot = modeling.plot(model, test, config)
    plot_uri = run_ctx.put_bytes(plot_name, plot,  # the promotion card shows it
                               mlflow_path=f"plots/{plot_name}")
    explained = explain_model(run_ctx, model, test, config.candidate_view(candidate or first.label)
                              if family is None or candidate else _family_view(config, family))

    champion = None
    current = tracking.alias_version(run_ctx.client, run_ctx.model_name)
    if current is not None:
        champion = {"version": str(current.version), "run_id": current.run_id}
        try:
            champion_model = tracking.load_version(run_ctx.client, run_ctx.model_name,
                                                   current.version)
            rows, excluded = unseen_by(test, current.tags.get("mlops.data_partitions", ""))
            champion_scores = modeling.scores(champion_model, rows, config)
            challenger_scores = modeling.scores(model, rows, config)
            y = modeling.target(rows, config)
            champion["metrics"] = metric_module.compute(config.task, y, champion_scores)
            if excluded:
                # Both models on the rows the champion never trained on: a fair comparison.
                champion.update(rows=len(rows), excluded_partitions=excluded,
                                challenger_metrics=metric_module.compute(config.task, y,
                                                                         challenger_scores))
                log.info("Champion comparison on %d of %d held-out rows: %s were in champion "
                         "v%s's training data", len(rows), len(test), ", ".join(excluded),
                         current.version)
            champion["significance"] = paired_significance(config, y, champion_scores,
                                                            challenger_scores)
            run_ctx.log_metrics({f"champion.{k}": v for k, v in champion["metrics"].items()})
        except ModelRefusedError:
            raise  # a tampered champion is an incident, not a lost comparison
        except Exception as err:  # noqa: BLE001 - the gate reports it as a failed check
            log.warning("Champion v%s cannot score the held-out rows: %s", current.version, err)
            champion["error"] = f"{type(err).__name__}: {err}"
    evaluation = {"metrics": held_out, "slices": slices, "champion": champion,
                  "model_uri": model_uri, "test_rows": len(test), "plot_uri": plot_uri,
                  **explained}
    uri = run_ctx.put_json("evaluation.json", evaluation, mlflow_path="evaluation/evaluation.json")
    log.info("Held-out metrics: %s%s", _fmt(held_out),
             f"; champion v{champion['version']}: {_fmt(champion.get('metrics', {}))}"
             if champion else "; no champion yet")
    return {"evaluation_uri": uri, "metrics": held_out}


EXPLANATION_PATH = "explanations/explanation.json"  # on the run of every registered version


def _family_view(config: DatasetConfig, family: str) -> DatasetConfig:
    """The config as model ``family`` was trained (a model from a train task that named no
    candidate): the first candidate of that family, else the config with that family."""
    for candidate in config.training.all_candidates:
        if candidate.family == family:
            return config.candidate_view(candidate.label)
    return config.model_copy(update={"training": config.training.model_copy(
        update={"family": family, "candidates": [], "search_space": {}})})


def explain_model(run_ctx: RunContext, model: Any, test: Any, config: DatasetConfig) -> dict[str, Any]:
    """SHAP values and permutation importance of ``model`` on the held-out rows
    (:mod:`include.mlops_core.explain`): the JSON and a summary plot on the MLflow run (so every
    registered version has them; the drift report ranks drifted columns by them) and in the
    run's folder for the card. Explanations inform, they do not gate: when they cannot be
    computed the card says why and the run goes on."""
    from include.mlops_core import explain

    try:
        explanation = explain.explain(model, test, config)
    except Exception as err:  # noqa: BLE001 - the card and the log say why; the run goes on
        why = f"{type(err).__name__}: {err}"
        log.warning("No explanation of this model: %s", why)
        return {"explanation": {"error": why}}
    run_ctx.client.log_dict(run_ctx.mlflow_run_id, explanation, EXPLANATION_PATH)
    run_ctx.client.log_dict(run_ctx.mlflow_run_id, {"top_features": explanation["top_features"]},
                          "explanations/top_features.json")
    picture = explain.summary_plot(explanation, f"{config.registered_model_name}: what drives "
                                                f"its predictions (held-out rows)")
    plot_uri = run_ctx.put_bytes("explanation.png", picture, mlflow_path="explanations/summary.png")
    run_ctx.log_metrics({"explain.shap_seconds": explanation["seconds"]["shap"],
                       "explain.permutation_seconds": explanation["seconds"]["permutation"]})
    top = explanation["top_features"][:10]
    return {"explanation": {"method": explanation["method"], "top_features": top,
                            "rows": explanation["rows"], "notes": explanation.get("notes", [])},
            "explanation_plot_uri": plot_uri}


def paired_significance(config: DatasetConfig, y: Any, champion: Any,
                        challenger: Any) -> dict[str, Any]:
    """The gate's paired test of challenger vs champion on the same rows
    (:func:`significance.paired_test`), as a dict for the evaluation and the card; a test that
    cannot apply (DeLong on a multi-class model) is ``{"error": why}``, which fails a gate that
    requires significance."""
    gate_config = config.gate
    metric = config.comparison_metric
    started = time.monotonic()
    try:
        interval = significance.paired_test(
            config.task, metric, y, champion, challenger, method=gate_config.significance_test,
            confidence=gate_config.significance_confidence,
            resamples=gate_config.bootstrap_resamples, seed=config.training.seed)
    except ValueError as err:
        log.warning("No paired significance test of %s: %s", metric, err)
        return {"metric": metric, "error": str(err)}
    log.info("Paired test (%.1f s): %s", time.monotonic() - started, interval.describe())
    return {**interval.as_dict(), "description": interval.describe()}


def unseen_by(test: Any, champion_partitions: str) -> tuple[Any, list[str]]:
    """Held-out rows from partitions the champion was not trained on, and the partitions left
    out. All rows when that would leave fewer than 50 (or none overlap)."""
    from include.mlops_core.ingest import SOURCE_COLUMN

    seen = [p for p in champion_partitions.split(",") if p]
    if not seen or SOURCE_COLUMN not in test:
        return test, []
    source = test[SOURCE_COLUMN].astype(str)
    overlap = [p for p in seen if source.str.contains(f"/{p}/", regex=False).any()]
    if not overlap:
        return test, []
    keep = ~source.apply(lambda uri: any(f"/{p}/" in uri for p in overlap))
    if keep.sum() < 50:
        log.warning("Only %d held-out rows are outside champion's training partitions %s; "
                    "comparing on all %d rows", int(keep.sum()), overlap, len(test))
        return test, []
    return test[keep], overlap


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in values.items())


# -- gate -------------------------------------------------------------------------------------------
def gate(run_ctx: RunContext, *, evaluation_uri: str, dag_context: dict[str, Any]) -> dict[str, Any]:
    evaluation = run_ctx.get_json(evaluation_uri)
    decision = gates.decide(run_ctx.config, evaluation["metrics"], evaluation["champion"])
    repro_uri = join(run_ctx.run_dir, "reproducibility.json")  # what train wrote
    repro = run_ctx.get_json(repro_uri) if run_ctx.store.exists(repro_uri) else None
    selection_uri = join(run_ctx.run_dir, "selection.json")  # what select wrote
    selection = run_ctx.get_json(selection_uri) if run_ctx.store.exists(selection_uri) else None
    card = gates.promotion_card(
        config=run_ctx.config, decision=decision,
        challenger={"mlflow_run_id": run_ctx.mlflow_run_id, "model_uri": evaluation["model_uri"],
                    "metrics": evaluation["metrics"], "test_rows": evaluation["test_rows"]},
        champion=evaluation["champion"], context=dag_context, loosened=list(run_ctx.loosened),
        lineage=gates.lineage(repro, image=run_ctx.client.get_run(run_ctx.mlflow_run_id).data.tags
                              .get("mlops.trainer.image")) if repro else None,
        plots=[uri for uri in (evaluation.get("plot_uri"), evaluation.get("explanation_plot_uri"))
               if uri],
        selection=selection, explanation=evaluation.get("explanation"))
    card_uri = run_ctx.put_json("promotion_card.json", card, mlflow_path="promotion_card.json")
    images = {uri.rsplit("/", 1)[-1]: run_ctx.store.read_bytes(uri) for uri in card["plots"]
              if run_ctx.store.exists(uri)}
    html = gates.render_card_html(card, images=images)
    run_ctx.store.write_bytes(join(run_ctx.run_dir, "promotion_card.html"), html.encode())
    run_ctx.client.log_text(run_ctx.mlflow_run_id, html, "promotion_card.html")
    run_ctx.client.set_tag(run_ctx.mlflow_run_id, "mlops.gate",
                         "approved" if decision.approved else "rejected")
    if run_ctx.loosened:
        run_ctx.client.set_tag(run_ctx.mlflow_run_id, LOOSENED_TAG, "; ".join(run_ctx.loosened)[:4000])
        log.warning("Gate decided under a LOOSENED gate (allowed by the deployment's policy): %s",
                    "; ".join(run_ctx.loosened))
    if not decision.approved:
        tracking.finish_run(run_ctx.client, run_ctx.mlflow_run_id, outcome="rejected")
    log.info(decision.log_line(run_ctx.model_name))
    compared_with = (evaluation["champion"] or {}).get("version")
    return {"approved": decision.approved, "reasons": decision.reasons, "card_uri": card_uri,
            "champion_version": compared_with}


# -- register and promote ---------------------------------------------------------------------------
def register(run_ctx: RunContext, *, model_uri: str, manifest_uri: str, dag_context: dict[str, Any],
             reproducibility_uri: str | None = None) -> dict[str, Any]:
    """Register the model as a new version tagged with its reproducibility manifest: the one
    ``train`` wrote (``reproducibility_uri``), or, for a model from an older train task that
    returned none, one rebuilt from the data manifest."""
    if reproducibility_uri:
        repro = run_ctx.get_json(reproducibility_uri)
    else:
        data_manifest = run_ctx.get_json(manifest_uri)
        repro = reproducibility.manifest(config=run_ctx.config, data_manifest=data_manifest,
                                         snapshot_uri=data_manifest["snapshot_uri"])
    tags = {
        "mlops.repro_key": repro["repro_key"],
        "mlops.data_fingerprint": repro["data"]["fingerprint"],
        "mlops.data_snapshot": repro["data"]["snapshot_uri"],
        "mlops.data_partitions": ",".join(repro["data"]["partitions"])[:4000],
        "mlops.code_version": repro["code_version"],
        "mlops.source_hash": repro["source_hash"],
        "mlops.params": json.dumps(repro["params"]["training"], sort_keys=True)[:4000],
        "mlops.seed": str(repro["seed"]),
        "mlops.packages": json.dumps(repro["packages"], sort_keys=True)[:4000],
        "mlops.reproducibility_uri": f"runs:/{run_ctx.mlflow_run_id}/reproducibility.json",
        "airflow.dag_id": str(dag_context.get("dag_id")),
        "airflow.run_id": str(dag_context.get("dag_run_id")),
    }
    version = tracking.register(run_ctx.client, model_name=run_ctx.model_name, model_uri=model_uri,
                                run_id=run_ctx.mlflow_run_id, tags=tags,
                                description=f"Trained by {dag_context.get('dag_id')} run "
                                            f"{dag_context.get('dag_run_id')}")
    return {"model_name": run_ctx.model_name, "version": version}


def _audit_uri(run_ctx: RunContext, alias: str, version: str, previous: str, dag_run_id: Any) -> str:
    label = "" if alias == tracking.CHAMPION else f"{alias}-"
    return join(run_ctx.artifacts_uri, "audit", run_ctx.model_name,
                f"{label}v{int(version):06d}-from-{previous}-{safe_name(str(dag_run_id))}.json")


def _complete_half_done(run_ctx: RunContext, current: Any, *, alias: str,
                        dag_context: dict[str, Any]) -> None:
    """``alias`` points at ``current`` but its promotion never finished: the promote task that
    moved the alias died before it tagged the version and wrote the audit record, and no retry
    completed it (retries used up). Say so, and complete that record now, so the audit chain
    has no gap: from ``pending_from`` (kept before the move), by the run that registered it."""
    prefix = "audit." if alias == tracking.CHAMPION else f"audit.{alias}."
    tags = dict(getattr(current, "tags", None) or {})
    if f"{prefix}pending_from" not in tags or f"{prefix}promoted_by" in tags:
        return  # a complete promotion, or one from before pending_from existed
    name, version = run_ctx.model_name, str(current.version)
    previous = tags[f"{prefix}pending_from"]
    dag_run_id = tags.get("airflow.run_id")
    by = f"airflow:{tags.get('airflow.dag_id')}/{dag_run_id}"
    repaired_by = f"airflow:{dag_context.get('dag_id')}/{dag_context.get('dag_run_id')}"
    log.warning("Half-done promotion: %s v%s is @%s (from %s, by %s) but its promote task died "
                "before it tagged the version and wrote the audit record; completing them now "
                "(repaired by %s)", name, version, alias, previous, by, repaired_by)
    record = {"model_name": name, "alias": alias, "from_version": previous,
              "to_version": version, "promoted_at": None, "by": by,
              "mlflow_run_id": current.run_id, "reasons": [],
              "repaired_by": repaired_by, "repaired_at": datetime.now(UTC).isoformat()}
    try:
        run_ctx.store.write_bytes(_audit_uri(run_ctx, alias, version, previous, dag_run_id),
                                json.dumps(record, indent=2).encode(), create_only=True)
    except ObjectExistsError:
        pass
    for key, value in (("promoted_from", previous), ("promoted_by", by),
                       ("repaired_by", repaired_by)):
        run_ctx.client.set_model_version_tag(name, version, f"{prefix}{key}", value)


def promote(run_ctx: RunContext, *, version: str, reasons: list[str], dag_context: dict[str, Any],
            alias: str = tracking.CHAMPION, compared_with: str | None = None) -> dict[str, Any]:
    """Point ``alias`` at ``version``, verify it, then write the audit record (tags + S3).

    ``compared_with`` is the champion version the gate compared against (None: there was none).
    If another run moved the alias since, the decision is stale and nothing is promoted. The
    version the alias pointed at before is kept in ``audit.pending_from`` first, so a retry after
    the alias moved still records where it came from. A failed verification is not retried
    (PromotionError): re-pointing the alias could undo a concurrent promotion.
    """
    client, name = run_ctx.client, run_ctx.model_name
    # Tags per alias: a version may become challenger first and champion later.
    prefix = "audit." if alias == tracking.CHAMPION else f"audit.{alias}."
    mv = client.get_model_version(name, version)
    if client.get_run(mv.run_id).data.tags.get("mlops.gate") != "approved":
        raise PromotionError(f"refusing to promote {name} v{version}: its run "
                             f"{mv.run_id} has no approved gate decision")
    current = tracking.alias_version(client, name, alias)
    if current is not None and str(current.version) == str(version):
        previous = mv.tags.get(f"{prefix}pending_from", "none")  # a retry after the alias was set
    else:
        if current is not None:
            _complete_half_done(run_ctx, current, alias=alias, dag_context=dag_context)
        previous = str(current.version) if current is not None else "none"
        champion = tracking.alias_version(client, name) if alias != tracking.CHAMPION \
            else current
        now = str(champion.version) if champion is not None else "none"
        if now != (compared_with or "none"):
            raise PromotionError(
                f"not promoting {name} v{version} to @{alias}: the gate compared it with champion "
                f"{'v' + compared_with if compared_with else '(none)'}, but @champion is now "
                f"v{now}, promoted by another run meanwhile. Trigger a new run to compare "
                "against the current champion")
        client.set_model_version_tag(name, version, f"{prefix}pending_from", previous)
        client.set_registered_model_alias(name, alias, str(version))
    check = tracking.alias_version(client, name, alias)
    if check is None or str(check.version) != str(version):
        raise PromotionError(f"alias @{alias} of {name} points at "
                             f"v{getattr(check, 'version', None)} after setting it to v{version}: "
                             "another promotion ran concurrently; check the audit log")
    record = {
        "model_name": name, "alias": alias, "from_version": previous, "to_version": str(version),
        "promoted_at": mv.tags.get(f"{prefix}promoted_at") or datetime.now(UTC).isoformat(),
        "by": f"airflow:{dag_context.get('dag_id')}/{dag_context.get('dag_run_id')}",
        "triggered_by": dag_context.get("triggered_by"),
        "trigger": dag_context.get("trigger"),
        "mlflow_run_id": run_ctx.mlflow_run_id, "reasons": reasons,
    }
    for key, value in (("promoted_from", previous), ("promoted_by", record["by"]),
                       ("promoted_at", record["promoted_at"]),
                       ("reason", "; ".join(reasons)[:4000])):
        client.set_model_version_tag(name, version, f"{prefix}{key}", value)
    client.set_model_version_tag(name, version, "mlops.gate", "approved")
    if run_ctx.loosened:
        record["loosened_gate"] = list(run_ctx.loosened)
        client.set_model_version_tag(name, version, LOOSENED_TAG,
                                     "; ".join(run_ctx.loosened)[:4000])
    audit_uri = _audit_uri(run_ctx, alias, str(version), previous, dag_context.get("dag_run_id"))
    try:
        run_ctx.store.write_bytes(audit_uri, json.dumps(record, indent=2).encode(), create_only=True)
    except ObjectExistsError:
        log.info("Audit record %s already written (task retry)", audit_uri)
    tracking.finish_run(client, run_ctx.mlflow_run_id,
                        outcome="promoted" if alias == tracking.CHAMPION else f"promoted:{alias}")
    log.info("Promoted %s v%s to @%s (was %s); verified; audit %s", name, version, alias,
             previous, audit_uri)
    return {"model_name": name, "version": str(version), "previous": previous,
            "audit_uri": audit_uri}
