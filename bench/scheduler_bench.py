"""The training DAG as users run it, through the real scheduler, vs the plain-script floor;
written to docs/benchmarks.md.

Starts SeaweedFS, MLflow (basic-auth) and Airflow (api-server, scheduler with the LocalExecutor,
dag-processor) on free ports with the settings ``./deploy.sh local`` uses (scripts/stack.py), then
per data size (one Parquet partition of the demo generator) alternates, ``--rounds`` times:

- the plain script (bench/plain_pipeline.py: the same ML steps in one fresh process, no
  Airflow) and
- a forced training run triggered over REST, trigger → success,

and finally one unchanged (not forced) re-run of the same partition. Reported, medians:
the ratio of the two, each task's fixed cost (task duration minus the plain script's time for
the same step, same round), the gap between a task's end and the start of the next one, the
unchanged re-run vs the cold run, and the idle stack's memory (PSS of every process; each task
worker's RSS).

    python bench/scheduler_bench.py [--rows 2000,100000] [--rounds 3] [--no-preload]

``--no-preload`` runs the plain LocalExecutor (tasks import their libraries in each fresh
process), for comparison; its section is written separately.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
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
PARTS = ("api-server", "dag-processor", "scheduler", "triggerer")  # as ./deploy.sh local
STEPS = ("check_changed", "ingest", "validate", "build_features", "train", "evaluate", "gate",
         "register", "promote")
DAY = date(2025, 6, 1)
IDLE_WINDOW = 30  # seconds over which the idle scheduler's CPU use is measured


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def run_plain(rows: int, round_no: int, env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, str(REPO / "bench/plain_pipeline.py"), "--model",
           f"bench_plain_{rows}_{round_no}", "--source", f"s3://mlops-data/bench-{rows}",
           "--date", DAY.isoformat()]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"plain script failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "promote" in result["steps"], f"the plain script did not promote: {result}"
    return result


def run_dag(api: Any, dataset: str, logical: datetime, force: bool) -> dict[str, Any]:
    """Trigger over REST, wait for the end; the run's and its tasks' times from the API."""
    from summary import task_instances

    conf = {"dataset": dataset, "partition_date": DAY.isoformat(), "force": force}
    started = time.monotonic()
    run = api.json("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", ok=(200, 201),
                   json={"logical_date": logical.isoformat(), "conf": conf})
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}"
    while run.get("state") not in ("success", "failed"):
        time.sleep(0.2)
        run = api.json("GET", path)
    client_wall = time.monotonic() - started
    tis = {ti["task_id"]: ti for ti in task_instances(api, DAG_ID, run["dag_run_id"])}
    if run["state"] != "success":
        failed = [t for t, ti in tis.items() if ti.get("state") == "failed"]
        raise RuntimeError(f"run {run['dag_run_id']} failed at {failed}")
    return {"wall_s": ts(run["end_date"]) - ts(run["queued_at"]), "client_wall_s": client_wall,
            "tasks": {t: {"state": ti["state"], "start": ts(ti["start_date"]),
                          "end": ts(ti["end_date"]), "duration": ti.get("duration") or 0.0}
                      for t, ti in tis.items() if ti.get("start_date") and ti.get("end_date")}}


def gaps(run: dict[str, Any], upstream: dict[str, list[str]]) -> list[float]:
    """For each task that ran after its upstream tasks: its start minus their last end."""
    out = []
    for task, ti in run["tasks"].items():
        ups = [run["tasks"][u]["end"] for u in upstream.get(task, []) if u in run["tasks"]]
        if ups:
            out.append(ti["start"] - max(ups))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of ``pids`` so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def pss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def group_pids(pgids: list[int]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) in pgids:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def process_name(pid: int) -> str:
    """A short name for the memory breakdown: the Airflow part, forkserver, worker, mlflow..."""
    cmd = cmdline(pid)
    if cmd.startswith("airflow serve-logs"):  # its process title (the triggerer's command line
        return "log servers"                  # may say --skip-serve-logs)
    for part in ("api-server", "scheduler", "dag-processor", "triggerer"):
        if f"airflow {part}" in cmd or f"airflow {part.replace('-', '_')}" in cmd:
            return part
    if "forkserver" in cmd:
        return "forkserver"
    if "LocalExecutor" in cmd:
        return "task workers"
    for name in ("mlflow", "weed", "gunicorn", "uvicorn", "huey"):
        if name in cmd:
            return "mlflow" if name != "weed" else "seaweedfs"
    return cmd.split(" ")[0].rsplit("/", 1)[-1] or str(pid)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="2000,100000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-preload", action="store_true")
    args = parser.parse_args()
    sizes = [int(r) for r in args.rows.split(",")]

    import yaml
    from stack import (
        MLFLOW_WORKER,
        airflow_process_env,
        configure_airflow,
        free_port,
        start_airflow,
        stop_group,
    )
    from summary import AirflowApi, wait_for_dag

    from include.mlops_core.config import deep_merge
    from include.mlops_core.demo_data import write_partitions

    with bench_services("mlops-sched-bench-") as services:
        work = services.work
        datasets = work / "datasets"
        shutil.copytree(REPO / "include" / "datasets", datasets)
        raw = yaml.safe_load((datasets / "churn_demo.yaml").read_text())
        store = services.store()
        for rows in sizes:
            # A model per round, as the plain script has: each cold run registers and promotes
            # (a second run of the same model would tie with its champion and stop at the gate).
            for round_no in range(args.rounds):
                (datasets / f"bench_{rows}_{round_no}.yaml").write_text(yaml.safe_dump(deep_merge(
                    raw, {"source_uri": f"s3://mlops-data/bench-{rows}",
                          "model_name": f"bench_dag_{rows}_{round_no}"})))
            write_partitions(store, f"s3://mlops-data/bench-{rows}", DAY, 1, rows=rows,
                             fmt="parquet")
        secrets = services.secrets
        plain_env = {**os.environ, "MLFLOW_TRACKING_URI": services.mlflow_url,
                     "MLFLOW_TRACKING_USERNAME": MLFLOW_WORKER,
                     "MLFLOW_TRACKING_PASSWORD": secrets["MLOPS_MLFLOW_WORKER_PASSWORD"],
                     "MLOPS_S3_ENDPOINT_URL": services.s3_url,
                     "AWS_ACCESS_KEY_ID": secrets["MLOPS_S3_WORKER_ACCESS_KEY"],
                     "AWS_SECRET_ACCESS_KEY": secrets["MLOPS_S3_WORKER_SECRET_KEY"],
                     "MLOPS_DATASETS_DIR": str(datasets), "GX_ANALYTICS_ENABLED": "False",
                     "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}

        home = work / "airflow"
        home.mkdir()
        port = free_port()
        passwords = home / "passwords.json"
        env = {**airflow_process_env(home, port, secrets, passwords_file=passwords,
                                     preload=not args.no_preload),
               "MLOPS_DATASETS_DIR": str(datasets), "MLOPS_TASK_RETRIES": "0"}
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True,
                       capture_output=True, cwd=home)
        configure_airflow(secrets, mlflow_url=services.mlflow_url, s3_url=services.s3_url,
                          passwords_file=passwords, scratch=home, env=env)
        procs = {}
        try:
            procs = start_airflow(PARTS, port=port, home=home, env=env,
                                  logs={part: home / "logs" / f"{part}.log" for part in PARTS})
            api = AirflowApi(f"http://127.0.0.1:{port}", "operator",
                             secrets["MLOPS_AIRFLOW_OPERATOR_PASSWORD"])
            admin = AirflowApi(f"http://127.0.0.1:{port}", "admin",
                               secrets["MLOPS_AIRFLOW_ADMIN_PASSWORD"])
            wait_for_dag(admin, DAG_ID, timeout=180)
            admin.json("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})
            tasks = admin.json("GET", f"/api/v2/dags/{DAG_ID}/tasks")["tasks"]
            upstream: dict[str, list[str]] = {}
            for task in tasks:
                for down in task.get("downstream_task_ids", []):
                    upstream.setdefault(down, []).append(task["task_id"])

            results: dict[int, dict[str, Any]] = {}
            logical = datetime(2025, 6, 2, tzinfo=UTC)
            for rows in sizes:
                plain, dag = [], []
                for round_no in range(args.rounds):
                    plain.append(run_plain(rows, round_no, plain_env))
                    logical += timedelta(hours=1)
                    dag.append(run_dag(api, f"bench_{rows}_{round_no}", logical, force=True))
                    assert dag[-1]["tasks"].get("promote", {}).get("state") == "success", \
                        f"round {round_no + 1} did not promote: {dag[-1]['tasks']}"
                    print(f"{rows} rows, round {round_no + 1}: plain {plain[-1]['wall_s']:.1f} s, "
                          f"scheduler {dag[-1]['wall_s']:.1f} s", flush=True)
                logical += timedelta(hours=1)
                unchanged = run_dag(api, f"bench_{rows}_{args.rounds - 1}", logical,
                                    force=False)
                assert unchanged["tasks"].get("train", {}).get("state") != "success", \
                    "the unchanged re-run trained again"
                results[rows] = {"plain": plain, "dag": dag, "unchanged": unchanged}

            time.sleep(10)  # idle: no task running
            scheduler_cpu = cpu_seconds(group_pids([procs["scheduler"].pid]))
            time.sleep(IDLE_WINDOW)
            scheduler_cpu = (cpu_seconds(group_pids([procs["scheduler"].pid]))
                             - scheduler_cpu) / IDLE_WINDOW
            groups = [p.pid for p in procs.values()]
            pids = group_pids(groups)
            stack_pss = pss_mb(pids)
            services_pss = pss_mb(group_pids(list(services.pids)))
            workers = {pid: rss_mb(pid) for pid in pids
                       if "LocalExecutor" in cmdline(pid) or "forkserver" in cmdline(pid)}
            by_process: dict[str, float] = {}
            for pid in pids + group_pids(list(services.pids)):
                name = process_name(pid)
                by_process[name] = by_process.get(name, 0.0) + pss_mb([pid])
            worker_lines = [f"{'forkserver' if 'forkserver' in cmdline(pid) else 'worker'} "
                            f"{rss:.0f} MB" for pid, rss in sorted(workers.items())]
        except BaseException:
            for part in PARTS:
                log = home / "logs" / f"{part}.log"
                if log.exists():
                    print(f"--- {part} log tail ---\n{log.read_text()[-3000:]}", file=sys.stderr)
            raise
        finally:
            for proc in procs.values():
                stop_group(proc.pid, timeout=15)

    med = statistics.median
    variant = "without preload (plain LocalExecutor)" if args.no_preload else "as shipped"
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on this project's 2-core machine "
        f"(`python bench/scheduler_bench.py{' --no-preload' if args.no_preload else ''}`), "
        f"{variant}: SeaweedFS, MLflow with basic-auth and Airflow (api-server, scheduler with "
        "the LocalExecutor, dag-processor, triggerer; SQLite) on this machine, configured as "
        f"`./deploy.sh local` does. Per size, {args.rounds} rounds alternate the plain script "
        "(bench/plain_pipeline.py, one fresh process) and a forced run triggered over REST "
        "(queued → success, from the API's times); medians. Bytecode compiled as "
        "`./deploy.sh` installs it.",
        "",
        "| measure | rows | plain script | scheduler | ratio / value | goal |",
        "|---|---|---|---|---|---|",
    ]
    for rows, res in results.items():
        p = med(r["wall_s"] for r in res["plain"])
        d = med(r["wall_s"] for r in res["dag"])
        fixed = [run["tasks"][step]["duration"] - plain["steps"][step]
                 for plain, run in zip(res["plain"], res["dag"], strict=True)
                 for step in STEPS if step in plain["steps"] and step in run["tasks"]]
        first = [run["tasks"]["check_changed"]["duration"] - plain["steps"]["check_changed"]
                 for plain, run in zip(res["plain"], res["dag"], strict=True)]
        gap = [g for run in res["dag"] for g in gaps(run, upstream)]
        unchanged = res["unchanged"]["wall_s"]
        goal = "≤ 1.0×"
        lines += [
            f"| trigger → success | {rows:,} | {p:.1f} s | {d:.1f} s | {d / p:.2f}× | {goal} |",
            f"| per-task fixed cost (task − plain step), median | {rows:,} | | | "
            f"{med(fixed):.2f} s | ≤ 0.3 s |",
            f"| the first task's (check_changed) fixed cost | {rows:,} | | | "
            f"{med(first):.2f} s | ≤ 1 s |",
            f"| gap between a task's end and the next one's start, median | {rows:,} | | | "
            f"{med(gap):.2f} s (max {max(gap):.2f}) | ≤ 0.3 s |",
            f"| unchanged re-run vs cold | {rows:,} | | {unchanged:.1f} s | "
            f"{unchanged / d:.1%} | ≤ 5 % |",
        ]
    lines += [
        "",
        f"Idle stack after the runs: Airflow's processes {stack_pss:.0f} MB PSS, MLflow and "
        f"SeaweedFS {services_pss:.0f} MB, in all {stack_pss + services_pss:.0f} MB (goal ≤ "
        f"1,500 MB). Task worker processes' RSS (shared pages counted in each): "
        + (", ".join(worker_lines) or "none") + ". The idle scheduler (its loop sleeps "
        f"{env.get('AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME', '1')} s when it has nothing "
        f"to do) used {scheduler_cpu:.1%} of one core over {IDLE_WINDOW} s.",
        "",
        "PSS by process: " + ", ".join(f"{name} {mb:.0f} MB" for name, mb in
                                       sorted(by_process.items(), key=lambda kv: -kv[1])) + ".",
        "",
    ]
    for rows, res in results.items():
        dag_tasks = {s: med(r["tasks"][s]["duration"] for r in res["dag"]) for s in STEPS
                     if all(s in r["tasks"] for r in res["dag"])}
        plain_steps = {s: med(r["steps"][s] for r in res["plain"]) for s in STEPS
                       if all(s in r["steps"] for r in res["plain"])}
        lines.append(f"{rows:,} rows, task durations through the scheduler (plain script's step) "
                     "in s: " + ", ".join(f"{s} {v:.2f} ({plain_steps.get(s, float('nan')):.2f})"
                                         for s, v in dag_tasks.items()))
        lines.append("")
    title = "Training DAG through the scheduler" + (" (no preload)" if args.no_preload else "")
    write_section(title, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
