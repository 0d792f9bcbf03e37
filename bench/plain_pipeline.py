"""The floor for the DAG benchmark: the same ML steps as the training DAG, in one plain Python
process with no Airflow (ingest → check → validate → features → train → evaluate → gate →
register → promote against the same MLflow server and S3 store).

Configured by environment: MLFLOW_TRACKING_URI (and MLFLOW_TRACKING_USERNAME/PASSWORD for a server
with basic-auth), MLOPS_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY. Prints one JSON line with the timings.

    python bench/plain_pipeline.py --model bench_plain --source s3://mlops-data/bench --date 2025-06-01
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from datetime import UTC, date, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    started = time.perf_counter()
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--date", type=date.fromisoformat, required=True)
    parser.add_argument("--artifacts", default="s3://mlops")
    args = parser.parse_args()

    from include.mlops_core import pipeline, tracking
    from include.mlops_core.config import resolve_config
    from include.mlops_core.storage import ObjectStore

    config = resolve_config({"dataset": "churn_demo", "model_name": args.model,
                             "source_uri": args.source})
    store = ObjectStore.from_env()
    dag_run_id = f"plain-{args.model}-{time.time_ns()}"
    context = {"dag_id": "plain_script", "dag_run_id": dag_run_id}
    steps: dict[str, float] = {}

    def step(name, fn, *a, **kw):
        t = time.perf_counter()
        out = fn(*a, **kw)
        steps[name] = round(time.perf_counter() - t, 3)
        return out

    login = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) \
        if os.environ.get("MLFLOW_TRACKING_USERNAME") else None  # as the workers (basic-auth)
    found = tracking.alias_version(tracking.RestRegistry(os.environ["MLFLOW_TRACKING_URI"],
                                                         auth=login), args.model)
    champion = None if found is None else asdict(found)
    changed = step("check_changed", pipeline.check_changed, config, store, [args.date],
                   champion, dag_run_id=dag_run_id)
    if changed["changed"]:
        from mlflow import MlflowClient  # as in the DAG: only a run that trains needs mlflow

        client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
        when = datetime.combine(args.date, datetime.min.time(), tzinfo=UTC)
        run_id = tracking.find_or_create_run(client, experiment=args.model, dag_id="plain_script",
                                             dag_run_id=dag_run_id, tags={}, run_name=args.model)
        run_ctx = pipeline.RunContext(config=config, store=store, client=client, mlflow_run_id=run_id,
                               artifacts_uri=args.artifacts, run_key=pipeline.run_key(when))
        ingested = step("ingest", pipeline.ingest, run_ctx, [args.date])
        step("validate", pipeline.validate, run_ctx, ingested["snapshot_uri"])
        features = step("build_features", pipeline.build_features, run_ctx, ingested["snapshot_uri"])
        model = step("train", pipeline.train, run_ctx, train_uri=features["train_uri"],
                     manifest_uri=ingested["manifest_uri"])
        evaluation = step("evaluate", pipeline.evaluate, run_ctx, model_uri=model["model_uri"],
                          test_uri=features["test_uri"])
        decision = step("gate", pipeline.gate, run_ctx, evaluation_uri=evaluation["evaluation_uri"],
                        dag_context=context)
        if decision["approved"]:
            version = step("register", pipeline.register, run_ctx, model_uri=model["model_uri"],
                           manifest_uri=ingested["manifest_uri"], dag_context=context,
                           reproducibility_uri=model["reproducibility_uri"])
            step("promote", pipeline.promote, run_ctx, version=version["version"],
                 reasons=decision["reasons"], dag_context=context)
    print(json.dumps({"wall_s": round(time.perf_counter() - started, 3), "steps": steps}))


if __name__ == "__main__":
    main()
