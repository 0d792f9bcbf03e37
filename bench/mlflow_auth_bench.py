"""What MLflow's basic-auth costs per request, written to docs/benchmarks.md.

Two MLflow servers on free ports over the same kind of SeaweedFS, one plain and one secured as
``./deploy.sh local`` runs it (basic-auth, logins cached for 60 s). The same client calls run
against both, in alternating rounds, as the workers' account: a registry read
(``get_experiment_by_name``), a metric write (``log_metric``) and the alias lookup the first
task of every run makes. Target: at most 10 ms added per request (median).

    python bench/mlflow_auth_bench.py [--requests 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_MS = 10.0


def timed(call, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sys.path[:0] = [str(REPO), str(REPO / "scripts"), str(REPO / "bench")]
    from mlflow import MlflowClient
    from report import write_section
    from stack import (
        MLFLOW_WORKER,
        MlflowLogin,
        free_port,
        generate_secrets,
        start_mlflow,
        start_throwaway_services,
    )

    from include.mlops_core.tracking import RestRegistry, alias_version

    work = Path(tempfile.mkdtemp(prefix="mlops-auth-bench-"))
    secrets = generate_secrets()
    s3, secured = start_throwaway_services(work / "secured", secrets)
    plain = start_mlflow(work / "plain", port=free_port(),
                         artifacts_destination="s3://mlflow/plain", s3_url=s3.url,
                         access_key=secrets["MLOPS_S3_MLFLOW_ACCESS_KEY"],
                         secret_key=secrets["MLOPS_S3_MLFLOW_SECRET_KEY"],
                         log_path=work / "plain.log")
    login = (MLFLOW_WORKER, secrets["MLOPS_MLFLOW_WORKER_PASSWORD"])
    results: dict[str, dict[str, list[float]]] = {"plain": {}, "basic-auth": {}}
    try:
        targets = {"plain": (plain.url, None), "basic-auth": (secured.url, login)}
        runs = {}
        for name, (url, auth) in targets.items():
            with MlflowLogin(*auth) if auth else nullcontext():
                client = MlflowClient(url, url)
                experiment = client.create_experiment("bench")
                client.create_registered_model("bench")  # no alias yet: one request to ask
                runs[name] = client.create_run(experiment).info.run_id
        for _ in range(args.rounds):
            for name, (url, auth) in targets.items():
                with MlflowLogin(*auth) if auth else nullcontext():
                    client = MlflowClient(url, url)
                    run_id = runs[name]
                    calls = {
                        "get_experiment_by_name": lambda c=client: c.get_experiment_by_name("bench"),
                        "log_metric": lambda c=client, r=run_id: c.log_metric(r, "m", 1.0),
                        "alias lookup (REST)": lambda u=url, a=auth: alias_version(
                            RestRegistry(u, auth=a), "bench"),
                    }
                    for call_name, call in calls.items():
                        results[name].setdefault(call_name, []).extend(timed(call, args.requests))
    finally:
        plain.stop()
        secured.stop()
        s3.stop()

    lines = [
        f"Median latency of one request from a client on the same machine, {args.requests} "
        f"requests per call and server in each of {args.rounds} alternating rounds, measured "
        f"{time.strftime('%Y-%m-%d')} on the project's 2-core machine "
        "(`python bench/mlflow_auth_bench.py`). `basic-auth` is MLflow as `./deploy.sh local` "
        "runs it: `--app-name basic-auth`, the workers' account, logins cached for 60 s "
        "(`auth_cache_ttl_seconds`; without the cache every request checks a PBKDF2 hash).",
        "",
        f"| call | plain, median | basic-auth, median | added | target ≤ {TARGET_MS:g} ms |",
        "|---|---|---|---|---|",
    ]
    for call_name in results["plain"]:
        a = statistics.median(results["plain"][call_name])
        b = statistics.median(results["basic-auth"][call_name])
        lines.append(f"| {call_name} | {a:.1f} ms | {b:.1f} ms | {b - a:+.1f} ms | "
                     f"{'met' if b - a <= TARGET_MS else 'missed'} |")
        print(f"{call_name}: plain {a:.1f} ms, basic-auth {b:.1f} ms", flush=True)
    lines += ["", "Where the added time goes: after the (cached) login, MLflow's auth app reads the "
              "caller's permission from its own database before every request; a run write "
              "(`log_metric`) first reads the run from the tracking store to find its experiment, "
              "then the permission on that experiment. A missed target is reported as measured."]
    write_section("MLflow basic-auth cost", "\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    main()
