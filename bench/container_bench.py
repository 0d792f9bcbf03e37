"""Docker trainer vs in-process trainer on the same data, written to docs/benchmarks.md.

Both paths are the train task's own methods (``TrainModelOperator.train_in_process`` and
``train_in_container``: pre-flight checks, container create/start/log streaming/wait, result
read-back and removal). Every measurement is a fresh process (a worker's task process pays its
imports; so does the container) training into a fresh MLflow run, against the same local MLflow
server and SeaweedFS. The image is built before timing (its first build is not counted).
Target: the container path costs <= 1 s more than in-process.

    python bench/container_bench.py [--rows 20000 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "plugins"), str(REPO / "scripts"), str(REPO / "bench")]


def one(trainer: str, job_path: Path) -> None:
    """Child process: one train through the operator; prints its timings as JSON."""
    from include.mlops_core.config import DatasetConfig
    from include.mlops_core.pipeline import RunContext
    from mlops_airflow.operators.trainer import TrainModelOperator

    job = json.loads(job_path.read_text())
    operator = TrainModelOperator(task_id="train", features={"train_uri": job["train_uri"]},
                                  ingest_result={"manifest_uri": job["manifest_uri"]},
                                  trainer=trainer, image=job["image"])
    client = operator.mlflow_hook.client
    run_id = client.create_run(job["experiment_id"]).info.run_id
    run_ctx = RunContext(config=DatasetConfig.model_validate(job["dataset_config"]),
                  store=operator.s3_hook.store, client=client, mlflow_run_id=run_id,
                  artifacts_uri=job["artifacts_uri"], run_key=job["run_key"])
    context = {"dag_run": SimpleNamespace(dag_id="bench", run_id=f"bench_{run_id}"),
               "ti": SimpleNamespace(try_number=1)}
    started = time.monotonic()
    result = operator.run(run_ctx, context)  # type: ignore[arg-type]
    wall = time.monotonic() - started
    metrics = client.get_run(run_id).data.metrics
    print(json.dumps({"wall_s": wall, "result": result,
                      "fixed_s": metrics.get("trainer.container_overhead_seconds")}, default=str))


def measure(trainer: str, job_path: Path, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--one", trainer, str(job_path)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{trainer} run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--one", nargs=2, metavar=("TRAINER", "JOB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one[0], Path(args.one[1]))
        return

    from report import write_section
    from services import bench_services

    started = time.monotonic()
    build = subprocess.run([sys.executable, str(REPO / "scripts/build_images.py")],
                           capture_output=True, text=True, check=True)
    image = build.stdout.strip().splitlines()[-1]
    print(f"image {image} ready in {time.monotonic() - started:.1f}s", flush=True)

    rows_out = []
    with bench_services("mlops-container-bench-") as services:
        work = services.work
        os.environ.update({
            **services.connections(),
            "AIRFLOW_HOME": str(work / "airflow"), "MLFLOW_TRACKING_URI": services.mlflow_url,
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")])})
        from mlflow import MlflowClient

        from include.mlops_core.config import load_dataset_config
        from include.mlops_core.demo_data import write_partitions
        from include.mlops_core.pipeline import RunContext, build_features, ingest

        store, client = services.store(), MlflowClient(services.mlflow_url)
        for rows in args.rows:
            source = f"s3://mlops-data/bench_{rows}"
            write_partitions(store, source, date(2025, 6, 1), 1, rows=rows, fmt="parquet")
            config = load_dataset_config("churn_demo", {"source_uri": source,
                                                        "model_name": f"bench_{rows}"})
            experiment_id = client.create_experiment(f"bench_container_{rows}")
            run_ctx = RunContext(config=config, store=store, client=client,
                          mlflow_run_id=client.create_run(experiment_id).info.run_id,
                          artifacts_uri="s3://mlops/bench", run_key=f"bench-{rows}")
            ingested = ingest(run_ctx, [date(2025, 6, 1)])
            features = build_features(run_ctx, ingested["snapshot_uri"])
            job_path = work / f"job_{rows}.json"
            job_path.write_text(json.dumps({
                "image": image, "experiment_id": experiment_id, "train_uri": features["train_uri"],
                "manifest_uri": ingested["manifest_uri"], "artifacts_uri": "s3://mlops/bench",
                "run_key": f"bench-{rows}", "dataset_config": json.loads(config.model_dump_json())}))
            inprocess, docker = [], []
            for i in range(args.repeat):  # interleaved, so drift in the machine hits both
                inprocess.append(measure("inprocess", job_path, dict(os.environ)))
                docker.append(measure("docker", job_path, dict(os.environ)))
                print(f"{rows} rows, round {i + 1}: in-process {inprocess[-1]['wall_s']:.2f}s, "
                      f"docker {docker[-1]['wall_s']:.2f}s (container fixed cost "
                      f"{docker[-1]['fixed_s']:.2f}s)", flush=True)
            a = statistics.median(r["wall_s"] for r in inprocess)
            b = statistics.median(r["wall_s"] for r in docker)
            overhead = statistics.median(d["wall_s"] - p["wall_s"]
                                         for d, p in zip(docker, inprocess, strict=True))
            fixed = statistics.median(r["fixed_s"] for r in docker)
            rows_out.append(f"| {rows:,} | {a:.2f} | {b:.2f} | {overhead:+.2f} | {fixed:.2f} | "
                            f"{'met' if overhead <= 1 else 'missed'} (<= 1 s) |")

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on this project's 2-core machine (Docker "
        f"{docker_version()}, no GPU), churn_demo rows x 12 columns (Parquet), median of "
        f"{args.repeat} interleaved rounds; each a fresh process running the train task's method "
        "into a fresh MLflow run (model logged over HTTP to the local MLflow server and "
        "SeaweedFS). The container path includes the pre-flight checks, container create, start, "
        "log streaming, result read-back and removal; the image was built before timing.",
        "",
        "| rows | in-process (s) | docker (s) | overhead (s, median of pairs) | "
        "container fixed cost (s) | target |",
        "|---|---|---|---|---|---|",
        *rows_out,
        "",
        "Container fixed cost: the task's wall time minus the trainer's own (pre-flight, create, "
        "start, Python start-up before the trainer's clock, result read-back, removal). The "
        "container path can be faster end to end: the image has mlflow-skinny, while the "
        "in-process path imports the full mlflow package the worker has.",
    ]
    write_section("Docker trainer vs in-process", "\n".join(lines))
    print("\n".join(lines))


def docker_version() -> str:
    out = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "?"


if __name__ == "__main__":
    main()
