"""What tuning and explanations cost where users feel it: the training DAG through the real
scheduler at 100k rows, untuned vs a 20-trial study with 1 and with 2 mapped tune tasks;
written to docs/benchmarks.md.

Starts SeaweedFS, MLflow (basic-auth) and Airflow (api-server, scheduler with the LocalExecutor,
dag-processor, triggerer; the Optuna studies in a SQLite file) with the settings
``./deploy.sh local`` uses, writes one partition of the demo generator, then triggers over REST,
each a first model (so each registers and promotes):

- ``untuned``: the bundled churn config (hist_gradient_boosting, fixed hyperparameters);
- ``tuned, 1 task`` and ``tuned, 2 tasks``: the same family with a search space over
  ``max_iter``, ``learning_rate`` and ``max_leaf_nodes``, ``n_trials`` trials of
  ``cv_folds``-fold cross-validation, ``parallel_tasks`` 1 and 2.

Reported: trigger → success, the tune tasks' span (first start to last end), the study's best
cross-validated score, the promoted model's held-out ROC AUC, the evaluate task (which computes
the explanations) and the explanations' own seconds, and the tuned run against the untuned one
(goal: under 3×).

    python bench/tuning_bench.py [--rows 100000] [--trials 20] [--folds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "scripts"), str(REPO / "bench")]

from report import write_section  # noqa: E402
from services import bench_services  # noqa: E402

DAG_ID = "training"
PARTS = ("api-server", "dag-processor", "scheduler", "triggerer")
DAY = date(2025, 6, 1)
SEARCH = {"max_iter": {"type": "int", "low": 50, "high": 300},
          "learning_rate": {"type": "float", "low": 0.02, "high": 0.3, "log": True},
          "max_leaf_nodes": {"type": "int", "low": 15, "high": 63}}


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def trigger(api: Any, dataset: str, logical: datetime) -> dict[str, Any]:
    """Trigger over REST, wait for the end; the run's and every task instance's times."""
    from summary import task_instances

    conf = {"dataset": dataset, "partition_date": DAY.isoformat(), "force": True}
    run = api.json("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", ok=(200, 201),
                   json={"logical_date": logical.isoformat(), "conf": conf})
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}"
    while run.get("state") not in ("success", "failed"):
        time.sleep(0.5)
        run = api.json("GET", path)
    tis = task_instances(api, DAG_ID, run["dag_run_id"])
    if run["state"] != "success":
        failed = [(t["task_id"], t.get("map_index")) for t in tis if t.get("state") == "failed"]
        raise RuntimeError(f"run {run['dag_run_id']} failed at {failed}")
    spans: dict[str, list[tuple[float, float]]] = {}
    for ti in tis:
        if ti.get("start_date") and ti.get("end_date"):
            spans.setdefault(ti["task_id"], []).append((ts(ti["start_date"]), ts(ti["end_date"])))
    return {"run_id": run["dag_run_id"], "wall_s": ts(run["end_date"]) - ts(run["queued_at"]),
            "spans": spans}


def span(run: dict[str, Any], task: str) -> float:
    parts = run["spans"].get(task) or []
    return max(e for _, e in parts) - min(s for s, _ in parts) if parts else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--folds", type=int, default=3)
    args = parser.parse_args()

    import yaml
    from stack import airflow_process_env, configure_airflow, free_port, start_airflow, stop_group
    from summary import AirflowApi, wait_for_dag

    from include.mlops_core import tuning
    from include.mlops_core.config import deep_merge
    from include.mlops_core.demo_data import write_partitions

    variants = {
        "untuned": {},
        "tuned, 1 task": {"parallel_tasks": 1},
        "tuned, 2 tasks": {"parallel_tasks": 2},
    }
    with bench_services("mlops-tuning-bench-") as services:
        work = services.work
        datasets = work / "datasets"
        shutil.copytree(REPO / "include" / "datasets", datasets)
        raw = yaml.safe_load((datasets / "churn_demo.yaml").read_text())
        source = f"s3://mlops-data/tuning-bench-{args.rows}"
        names = {}
        for i, (label, tune) in enumerate(variants.items()):
            name = f"tuning_bench_{i}"
            names[label] = name
            override: dict[str, Any] = {"source_uri": source, "model_name": name}
            if tune:
                hp = {k: v for k, v in raw["training"]["hyperparameters"].items() if k not in SEARCH}
                override["training"] = {"hyperparameters": hp, "search_space": SEARCH,
                                        "tuning": {"n_trials": args.trials, "cv_folds": args.folds,
                                                   **tune}}
            config = deep_merge(raw, override)
            if tune:
                config["training"]["hyperparameters"] = override["training"]["hyperparameters"]
            (datasets / f"{name}.yaml").write_text(yaml.safe_dump(config))
        write_partitions(services.store(), source, DAY, 1, rows=args.rows, fmt="parquet")

        home = work / "airflow"
        home.mkdir()
        port = free_port()
        passwords = home / "passwords.json"
        env = {**airflow_process_env(home, port, services.secrets, passwords_file=passwords),
               "MLOPS_DATASETS_DIR": str(datasets), "MLOPS_TASK_RETRIES": "0"}
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True,
                       capture_output=True, cwd=home)
        optuna_db = home / "optuna.db"
        configure_airflow(services.secrets, mlflow_url=services.mlflow_url,
                          s3_url=services.s3_url, passwords_file=passwords, scratch=home, env=env,
                          optuna_db=optuna_db)
        procs: dict[str, Any] = {}
        results: dict[str, dict[str, Any]] = {}
        try:
            procs = start_airflow(PARTS, port=port, home=home, env=env,
                                  logs={part: home / "logs" / f"{part}.log" for part in PARTS})
            api = AirflowApi(f"http://127.0.0.1:{port}", "operator",
                             services.secrets["MLOPS_AIRFLOW_OPERATOR_PASSWORD"])
            admin = AirflowApi(f"http://127.0.0.1:{port}", "admin",
                               services.secrets["MLOPS_AIRFLOW_ADMIN_PASSWORD"])
            wait_for_dag(admin, DAG_ID, timeout=180)
            admin.json("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})
            from mlflow import MlflowClient

            os.environ.update({k: v for k, v in services.connections().items()
                               if k.startswith("MLFLOW_TRACKING_")})
            client = MlflowClient(tracking_uri=services.mlflow_url)
            logical = datetime(2025, 6, 2, tzinfo=UTC)
            for label, name in names.items():
                logical += timedelta(hours=1)
                run = trigger(api, name, logical)
                [parent] = client.search_runs(
                    [client.get_experiment_by_name(name).experiment_id],
                    filter_string=f"tags.`airflow.run_id` = '{run['run_id']}'")
                metrics = parent.data.metrics
                study = None if label == "untuned" else tuning.summary(
                    f"sqlite:///{optuna_db}",
                    tuning.study_name(name, run["run_id"], "hist_gradient_boosting"))
                results[label] = {**run, "metrics": metrics, "study": study}
                print(f"{label}: {run['wall_s']:.1f} s, tune {span(run, 'tune'):.1f} s, "
                      f"held-out roc_auc {metrics.get('roc_auc', float('nan')):.4f}", flush=True)
        except BaseException:
            for part in PARTS:
                log = home / "logs" / f"{part}.log"
                if log.exists():
                    print(f"--- {part} log tail ---\n{log.read_text()[-3000:]}", file=sys.stderr)
            raise
        finally:
            for proc in procs.values():
                stop_group(proc.pid, timeout=15)

    base = results["untuned"]["wall_s"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on this project's 2-core machine "
        f"(`python bench/tuning_bench.py --rows {args.rows} --trials {args.trials} --folds "
        f"{args.folds}`): the training DAG through the scheduler (LocalExecutor, SQLite, as "
        "`./deploy.sh local`), triggered over REST, one run per row; the churn demo, "
        f"{args.rows:,} rows (75 % train). Tuned: hist_gradient_boosting over max_iter 50–300, "
        "learning_rate 0.02–0.3 (log), max_leaf_nodes 15–63; TPE, median pruning per fold; "
        "one study shared by the mapped tune tasks. Explanations (SHAP on 500 held-out rows, "
        "permutation importance on 5,000 × 5) run inside evaluate in every run.",
        "",
        "| run | trigger → success | vs untuned (goal < 3×) | tune tasks' span | trials "
        "(complete / pruned) | best CV roc_auc | held-out roc_auc | evaluate (explanations) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, res in results.items():
        study = res["study"] or {}
        trials = study.get("trials") or {}
        m = res["metrics"]
        explain_s = m.get("explain.shap_seconds", 0.0) + m.get("explain.permutation_seconds", 0.0)
        lines.append(
            f"| {label} | {res['wall_s']:.1f} s | {res['wall_s'] / base:.2f}× | "
            f"{span(res, 'tune'):.1f} s ({len(res['spans'].get('tune') or [])} task(s)) | "
            + (f"{trials.get('complete', 0)} / {trials.get('pruned', 0)} | "
               f"{study.get('best_value', float('nan')):.4f} | " if study else "- | - | ")
            + f"{m.get('roc_auc', float('nan')):.4f} | {span(res, 'evaluate'):.1f} s "
              f"({explain_s:.1f} s) |")
    lines.append("")
    write_section("Tuning and explanations", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
