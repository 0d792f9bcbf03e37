"""The production topology under a burst: scheduler latency (task queued → running) and the
throughput of ten training runs triggered at once, with one and with two Celery workers, and
with the workers' preload and without it; written to docs/benchmarks.md.

Each configuration starts the Celery topology of tests/integration/celery_stack.py on this
machine (processes, no containers): api-server, scheduler and dag-processor with the
CeleryExecutor, PostgreSQL as the metadata database, Redis as the broker, MLflow with basic-auth
on PostgreSQL, SeaweedFS; then N ``airflow celery worker`` processes (``--concurrency 1`` each).
One warm-up run per configuration (not counted: the first task of a fresh worker, and a
champion to gate against), then ``--runs`` training runs for different logical dates triggered
over REST at once, each forced on the same partition with its own hyperparameters (so each
trains, evaluates and gates; the better ones register and promote, as in production).

Reported per configuration, from the API's times: wall time from the first trigger to the last
run's end and runs per minute; per task instance, queued → running (``queued_when`` →
``start_date``) and scheduled → queued; the gap between one run's end and the next one's start;
each task's median duration.

    python bench/celery_bench.py [--runs 10] [--rows 2000] [--configs 1,2,2-no-preload,1-hb5]

Needs PostgreSQL on 127.0.0.1:5432 (trust auth) and Redis on 127.0.0.1:6379, as the
integration tests do.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent)]
from report import write_section  # noqa: E402
from services import REPO, bench_services  # noqa: E402

DAY = date(2025, 6, 1)
# Celery's default configuration: the workers import nothing before they fork their pool.
NO_PRELOAD = "airflow.providers.celery.executors.default_celery.DEFAULT_CELERY_CONFIG"


def ts(value: str | None) -> float | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def hyperparameters(i: int) -> dict[str, Any]:
    """The i-th run's: other trees, so each run's model differs and the gate has work to do."""
    return {"max_iter": 30 + 10 * (i % 8), "learning_rate": 0.05 + 0.02 * (i % 5),
            "max_leaf_nodes": 7 + 4 * (i % 6)}


def label(config: str) -> str:
    """'2-no-preload-hb1' -> '2 workers, no preload, min_heartbeat_interval 1 s'."""
    workers = re.match(r"\d+", config).group(0)
    text = f"{workers} worker{'s' if workers != '1' else ''}"
    if "-no-preload" in config:
        text += ", no preload"
    if match := re.search(r"-hb(\d+)", config):
        text += f", `min_heartbeat_interval` {match.group(1)} s"
    return text


def burst(stack: Any, dataset: str, runs: int, first_day: date) -> dict[str, Any]:
    """One warm-up run, then ``runs`` runs triggered at once; their runs and task instances."""
    warm = stack.trigger(str(first_day), dataset=dataset, partition_date=str(DAY), force=True,
                         training={"hyperparameters": hyperparameters(0)})
    assert stack.wait(warm, timeout=600)["state"] == "success", stack.failure_report(warm)
    days = [str(first_day + timedelta(days=1 + i)) for i in range(runs)]
    started = time.time()
    with ThreadPoolExecutor(runs) as pool:
        run_ids = list(pool.map(lambda i: stack.trigger(
            days[i], dataset=dataset, partition_date=str(DAY), force=True,
            training={"hyperparameters": hyperparameters(i + 1)}), range(runs)))
    triggered = time.time() - started
    found = {run_id: stack.wait(run_id, timeout=1800) for run_id in run_ids}
    for run_id, run in found.items():
        assert run["state"] == "success", stack.failure_report(run_id)
    # The worker's side: how long each workload held its pool process (supervisor start, the
    # task, the supervisor's wait for the task process to exit), by task instance id.
    held = {}
    for log in stack.logs.values():
        if "worker" in log.name and log.exists():
            for match in re.finditer(r"Workload finished .*?duration=([\d.]+).*?workload_id=(\S+)",
                                     log.read_text(errors="replace")):
                held[match.group(2)] = float(match.group(1))
    return {"started": started, "triggered_s": triggered, "runs": found, "held": held,
            "tis": {run_id: stack.task_instances(run_id) for run_id in run_ids}}


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    med = statistics.median
    runs, tis = result["runs"], result["tis"]
    end = max(ts(r["end_date"]) for r in runs.values())
    wall = end - result["started"]
    ran = [ti for by_task in tis.values() for ti in by_task.values()
           if ti["state"] in ("success", "failed") and ti.get("queued_when") and ti.get("start_date")]
    queued = sorted(ts(ti["start_date"]) - ts(ti["queued_when"]) for ti in ran)
    scheduled = sorted(ts(ti["queued_when"]) - ts(ti["scheduled_when"]) for ti in ran
                       if ti.get("scheduled_when"))
    order = sorted(runs.values(), key=lambda r: ts(r["start_date"]))
    between = [ts(b["start_date"]) - ts(a["end_date"]) for a, b in zip(order, order[1:], strict=False)]
    # Most task instances running at one moment (did a second worker ever run one beside another?)
    events = sorted([(ts(ti["start_date"]), 1) for ti in ran] + [(ts(ti["end_date"]), -1) for ti in ran])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    durations: dict[str, list[float]] = {}
    for ti in ran:
        durations.setdefault(ti["task_id"], []).append(ti["duration"])
    outside = sorted(result["held"][ti["id"]] - ti["duration"] for ti in ran
                     if ti["id"] in result["held"])
    promoted = sum(1 for by_task in tis.values() if by_task["promote"]["state"] == "success")
    return {
        "wall": wall, "per_min": len(runs) / wall * 60, "tis": len(ran),
        "queued_med": med(queued), "queued_p95": queued[int(0.95 * (len(queued) - 1))],
        "queued_max": queued[-1],
        "scheduled_med": med(scheduled) if scheduled else float("nan"),
        "between_med": med(between) if between else float("nan"),
        "run_med": med(ts(r["end_date"]) - ts(r["start_date"]) for r in runs.values()),
        "peak": peak, "promoted": promoted, "outside_med": med(outside),
        "outside_p95": outside[int(0.95 * (len(outside) - 1))], "outside_max": outside[-1],
        "outside_over_4": sum(1 for value in outside if value > 4) / len(outside),
        "tasks": {task: med(values) for task, values in durations.items()},
        "workers": sorted({ti.get("hostname") or "?" for ti in ran}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--configs", default="1,2,2-no-preload,1-hb5",
                        help="comma-separated: a worker count, then '-no-preload' for Celery's "
                             "defaults and/or '-hbN' for [workers] min_heartbeat_interval = N")
    args = parser.parse_args()
    configs = args.configs.split(",")
    # `kill` stops the stack too: the context managers below run on SystemExit, not on SIGTERM.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    import yaml

    from include.mlops_core.config import deep_merge
    from include.mlops_core.demo_data import write_partitions

    results: dict[str, dict[str, Any]] = {}
    with bench_services("mlops-celery-bench-") as services:
        from tests.integration.celery_stack import start_celery_stack

        datasets = services.work / "datasets"
        datasets.mkdir()
        policy = services.work / "policy.yaml"
        policy.write_text(yaml.safe_dump({}))  # the shipped default policy
        os.environ.update(MLOPS_POLICY_FILE=str(policy), MLOPS_DATASETS_DIR=str(datasets))
        raw = yaml.safe_load((REPO / "include" / "datasets" / "churn_demo.yaml").read_text())
        source = "s3://mlops-data/bench-celery"
        write_partitions(services.store(), source, DAY, 1, rows=args.rows, fmt="parquet")
        for number, config in enumerate(configs):
            workers = int(config.split("-")[0])
            name = f"bench_celery_{number}"
            (datasets / f"{name}.yaml").write_text(yaml.safe_dump(deep_merge(
                raw, {"source_uri": source, "model_name": name})))
            settings = {}
            if "-no-preload" in config:
                settings["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"] = NO_PRELOAD
            if match := re.search(r"-hb(\d+)", config):
                settings["AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL"] = match.group(1)
            home = services.work / f"airflow-{number}"
            home.mkdir()
            began = time.monotonic()
            with start_celery_stack(services, home, settings, workers=workers) as stack:
                up = time.monotonic() - began
                print(f"{config}: stack up in {up:.0f} s", flush=True)
                result = burst(stack, name, args.runs, DAY + timedelta(days=100 * (number + 1)))
            results[config] = {**summarise(result), "up": up}
            print(f"{config}: {results[config]}", flush=True)

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on this project's 2-core machine "
        f"(`python bench/celery_bench.py --runs {args.runs} --rows {args.rows}`): the Celery "
        "topology as processes (tests/integration/celery_stack.py: api-server, scheduler, "
        "dag-processor, PostgreSQL metadata DB, Redis broker, MLflow with basic-auth on "
        "PostgreSQL, SeaweedFS), workers with `--concurrency 1`. Per configuration one warm-up "
        f"run, then {args.runs} forced training runs for different dates triggered over REST at "
        f"once, each with its own hyperparameters on the same {args.rows:,}-row partition. Times "
        "from the API.",
        "",
        "| measure | " + " | ".join(label(c) for c in configs) + " |",
        "|---|" + "---|" * len(configs),
    ]
    rows = [
        ("burst: first trigger → last run's end", lambda r: f"{r['wall']:.0f} s"),
        ("throughput", lambda r: f"{r['per_min']:.2f} runs/min"),
        ("one run, start → end, median", lambda r: f"{r['run_med']:.1f} s"),
        ("gap between one run's end and the next one's start, median",
         lambda r: f"{r['between_med']:.2f} s"),
        ("task queued → running, median", lambda r: f"{r['queued_med']:.2f} s"),
        ("task queued → running, p95 / max",
         lambda r: f"{r['queued_p95']:.2f} / {r['queued_max']:.2f} s"),
        ("task scheduled → queued, median", lambda r: f"{r['scheduled_med']:.2f} s"),
        ("worker's pool process held outside the task (supervisor start and exit), median / "
         "p95 / max", lambda r: f"{r['outside_med']:.2f} / {r['outside_p95']:.2f} / "
                                f"{r['outside_max']:.2f} s"),
        ("share of tasks whose pool process was held > 4 s longer than the task",
         lambda r: f"{r['outside_over_4']:.0%}"),
        ("most task instances running at once", lambda r: str(r["peak"])),
        ("runs that promoted", lambda r: f"{r['promoted']} of {args.runs}"),
        ("stack start (databases, MLflow, Airflow, workers ready)", lambda r: f"{r['up']:.0f} s"),
    ]
    for measure, cell in rows:
        lines.append(f"| {measure} | " + " | ".join(cell(results[c]) for c in configs) + " |")
    lines.append("")
    tasks = list(next(iter(results.values()))["tasks"])
    lines.append("Task durations, median (s): " + "; ".join(
        f"{task} " + " / ".join(f"{results[c]['tasks'].get(task, float('nan')):.2f}" for c in configs)
        for task in tasks) + f" ({' / '.join(label(c) for c in configs)}).")
    lines.append("")
    write_section("Celery topology: latency and throughput of a burst", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
